//! The `convnextv2!` macro's forward pass, timed as `cnx bench` and the C example time theirs
//! (median and min of N runs after one untimed pass), for `tools/bench_aot.sh`, which runs the three
//! in alternating rounds on the same weights and input size.
//!
//! `cargo bench -p cnx-tests --bench macro_forward -- PRESET WEIGHTS BATCH RUNS THREADS`
//! (PRESET: `atto-1k-224` or `tiny-1k-224`).

use std::time::Instant;

convnextv2::convnextv2!(config = "atto-1k-224", name = Atto);
convnextv2::convnextv2!(config = "tiny-1k-224", name = Tiny);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [preset, weights, batch, runs, threads] = args.as_slice() else {
        eprintln!("usage: macro_forward PRESET WEIGHTS BATCH RUNS THREADS");
        std::process::exit(2);
    };
    let (batch, runs, threads): (usize, usize, usize) = (
        batch.parse().unwrap(),
        runs.parse().unwrap(),
        threads.parse().unwrap(),
    );
    type Forward = Box<dyn Fn(&[f32], usize) -> Vec<f32>>;
    let (forward, chw): (Forward, usize) = match preset.as_str() {
        "atto-1k-224" => {
            let m = Atto::load(weights).unwrap().with_threads(threads);
            (
                Box::new(move |x, b| m.forward(x, b).unwrap()),
                3 * 224 * 224,
            )
        }
        "tiny-1k-224" => {
            let m = Tiny::load(weights).unwrap().with_threads(threads);
            (
                Box::new(move |x, b| m.forward(x, b).unwrap()),
                3 * 224 * 224,
            )
        }
        other => panic!("no macro model for {other}"),
    };
    let x: Vec<f32> = (0..batch * chw).map(|i| (i as f32 * 0.37).sin()).collect();
    forward(&x, batch);
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(forward(&x, batch));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "macro {preset} batch {batch} threads {threads}: median {:.2} ms over {runs} runs (min {:.2})",
        times[runs / 2],
        times[0]
    );
}
