//! Per-thread scratch buffers, kept for the life of the thread: kernels borrow their
//! temporaries here instead of allocating, so a warm forward pass allocates nothing (pool
//! threads live as long as the process).
//!
//! A borrowed buffer's contents are unspecified (left by an earlier user): callers write
//! before they read. Borrows nest (each takes its own buffer).

use std::cell::RefCell;

macro_rules! scratch_fn {
    ($name:ident, $t:ty) => {
        /// Runs `f` with a scratch buffer of `len` elements (unspecified contents).
        pub fn $name<R>(len: usize, f: impl FnOnce(&mut [$t]) -> R) -> R {
            thread_local! {
                static FREE: RefCell<Vec<Vec<$t>>> = const { RefCell::new(Vec::new()) };
            }
            // The smallest free buffer that holds `len`, else the largest (grown below): a
            // thread's buffers serve its kernels' requests whatever order those came in (taking
            // the last one freed, a small one could meet a large request after a task stolen
            // from another thread changed the order: an allocation in a warm pass, seen once
            // in `no_allocation` with 3 threads on 2 cores).
            let mut buf = FREE
                .with(|free| {
                    let mut free = free.borrow_mut();
                    let fits = (0..free.len())
                        .filter(|&i| free[i].len() >= len)
                        .min_by_key(|&i| free[i].len());
                    let at = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()));
                    at.map(|i| free.swap_remove(i))
                })
                .unwrap_or_default();
            if buf.len() < len {
                buf.resize(len, <$t>::default());
            }
            let r = f(&mut buf[..len]);
            FREE.with(|free| free.borrow_mut().push(buf));
            r
        }
    };
}

scratch_fn!(with_f32, f32);
scratch_fn!(with_f64, f64);
scratch_fn!(with_u8, u8);
scratch_fn!(with_u16, u16);
// A row of quantised activations on its way into the AMX tiles' layout (beside a block in
// `with_u8`).
scratch_fn!(with_row_u8, u8);
scratch_fn!(with_row_quants, crate::kernels::quantize::RowQuant);

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_are_reused_and_nest() {
        let first = super::with_f32(100, |a| {
            a.fill(1.0);
            // A nested borrow gets a different buffer.
            super::with_f32(10, |b| assert_ne!(a.as_ptr(), b.as_ptr()));
            a.as_ptr() as usize
        });
        let again = super::with_f32(50, |a| a.as_ptr() as usize);
        assert_eq!(first, again, "the same thread's buffer comes back");
    }

    /// A thread with a large and a small buffer serves a large request with the large one,
    /// whatever order its requests come in (no buffer grows: no allocation in a warm pass).
    #[test]
    fn a_request_gets_a_buffer_that_fits_whatever_the_order() {
        let (large, small) = super::with_u16(1000, |a| {
            let small = super::with_u16(10, |b| b.as_ptr() as usize);
            (a.as_ptr() as usize, small)
        });
        // The small request first now: it must not take (and the large one then grow) the
        // buffer the large request needs.
        let (outer, inner) = super::with_u16(10, |a| {
            let inner = super::with_u16(1000, |b| b.as_ptr() as usize);
            (a.as_ptr() as usize, inner)
        });
        assert_eq!((outer, inner), (small, large));
    }
}
