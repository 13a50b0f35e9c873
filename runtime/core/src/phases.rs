//! Runs a program phase by phase: each [`Phase`] op-parallel (every op split over the
//! threads), or image-parallel (each image through the whole phase on one thread) when the
//! compiler marked it so and the batch has at least as many images as there are threads.
//!
//! Every backend runs its forward pass through [`run`]: the interpreter with its step loop,
//! the JIT's and an object's code with their compiled entry (one call per phase), the
//! `convnextv2!` macro's code with its emitted phase bodies. The schedule is decided here
//! once; no backend has code of its own for it. Results do not depend on it: every kernel
//! computes each image's values as one thread computes them for that image alone (the tests
//! hold batch 3 and 8 at 1, 2 and 3 threads bit-equal to batch 1 on every backend).

use crate::compiled::Workspace;
use crate::pool;
use crate::program::Phase;

/// Whether a phase marked `images` runs image-parallel at `batch` on `threads` threads.
pub fn image_parallel(phase: &Phase, batch: usize, threads: usize) -> bool {
    phase.images && threads > 1 && batch >= threads
}

/// Runs `phases` in order on `ws` (sized for its batch, the input in its slot) with the current
/// pool's threads: `run(ws, batch, k)` runs phase `k`'s steps on a workspace of this layout
/// for `batch` images (the whole workspace, a one-image lane, or the remainder's) and returns
/// `false` when a step failed. Returns `false` at the first phase that failed.
pub fn run(
    phases: &[Phase],
    ws: &mut Workspace,
    run: &(dyn Fn(&mut Workspace, usize, usize) -> bool + Sync),
) -> bool {
    let threads = pool::threads();
    let batch = ws.batch();
    for (k, phase) in phases.iter().enumerate() {
        let ok = if image_parallel(phase, batch, threads) {
            ws.run_images(&phase.live_in, &phase.live_out, threads, &|lane, b| {
                run(lane, b, k)
            })
        } else {
            run(ws, batch, k)
        };
        if !ok {
            return false;
        }
    }
    true
}
