//! A warm forward pass of a compiled model allocates nothing: activations live in the
//! workspace, kernel temporaries in per-thread scratch buffers, and the pool dispatches
//! without allocating. Counted with a global allocator that counts every allocation on every
//! thread (pool workers included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cnx_cli::{random, ModelSpec};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above, for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// atto at 96x96: the row-split GEMM (early stages) and the column split (late stages, few
// rows), depthwise, patch convs, GRN sums, the head; in f32 and in int8 (rows quantised into
// per-thread scratch, and for a column split once into shared scratch).
convnextv2::convnextv2!(config = "atto-1k-224", name = Atto96, image_size = 96);
convnextv2::convnextv2!(
    config = "atto-1k-224",
    name = Atto96Int8,
    image_size = 96,
    precision = "int8"
);
convnextv2::convnextv2!(
    config = "atto-1k-224",
    name = Atto96Bf16,
    image_size = 96,
    precision = "bf16"
);

/// The generated model types' forward passes, for one check over both.
trait Forward {
    const NUM_LABELS: usize;
    fn load(path: &std::path::Path, threads: usize) -> Self;
    fn forward_into(&self, x: &[f32], batch: usize, logits: &mut [f32]);
    fn forward(&self, x: &[f32], batch: usize) -> Vec<f32>;
}

macro_rules! forward {
    ($t:ident) => {
        impl Forward for $t {
            const NUM_LABELS: usize = $t::NUM_LABELS;
            fn load(path: &std::path::Path, threads: usize) -> Self {
                $t::load(path).unwrap().with_threads(threads)
            }
            fn forward_into(&self, x: &[f32], batch: usize, logits: &mut [f32]) {
                $t::forward_into(self, x, batch, logits).unwrap()
            }
            fn forward(&self, x: &[f32], batch: usize) -> Vec<f32> {
                $t::forward(self, x, batch).unwrap()
            }
        }
    };
}
forward!(Atto96);
forward!(Atto96Int8);
forward!(Atto96Bf16);

// One test: the counter is global, so nothing else may run while it counts.
#[test]
fn a_warm_forward_pass_allocates_nothing() {
    check::<Atto96>("f32");
    check::<Atto96Int8>("int8");
    check::<Atto96Bf16>("bf16");
}

fn check<M: Forward>(precision: &str) {
    let spec = ModelSpec::resolve("atto-1k-224").unwrap();
    let graph = cnx_compiler::build_graph(&spec.config, (96, 96)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    random::write_safetensors(&path, &random::random_parameters(&graph, 3)).unwrap();
    for (threads, batch) in [(1, 1), (2, 1), (2, 3), (3, 2), (2, 8)] {
        let model = M::load(&path, threads);
        let x = random::random_pixel_values(&graph, batch, 5);
        let mut logits = vec![0f32; batch * M::NUM_LABELS];
        // The first call sizes the workspace and every thread's scratch.
        model.forward_into(x.data(), batch, &mut logits);
        let first = logits.clone();
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..3 {
            model.forward_into(x.data(), batch, &mut logits);
        }
        let during = ALLOCATIONS.load(Ordering::SeqCst) - before;
        assert_eq!(
            during, 0,
            "{precision}, {threads} threads, batch {batch}: {during} allocations"
        );
        assert_eq!(logits, first);
        // The counter works: an allocating call is seen.
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        let _ = model.forward(x.data(), batch);
        assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
    }
}
