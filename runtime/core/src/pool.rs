//! The thread pool: `threads - 1` workers per thread count, started on first use and kept
//! for the life of the process, plus the calling thread, which works too.
//!
//! A backend runs a forward pass inside [`install`]; each op then hands the pool a fixed
//! number of tasks ([`parallel_for`]). Thread `t` owns tasks `t, t + threads, ...` and runs
//! them first; a thread done with its own takes unstarted ones from the back of another's
//! list (a core the system gives to something else no longer holds the op up). How tasks are cut is
//! decided by the op from [`threads`] alone, and every output element is computed exactly as
//! one thread would compute it, so results do not depend on the thread count or on which
//! thread ran which task. Dispatching a task set allocates nothing: a warm forward pass does
//! not touch the allocator.

use std::cell::RefCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The machine's cores, the default thread count.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

thread_local! {
    /// The pool the current thread dispatches to (set by `install`).
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
    /// Set on pool workers and on a caller while it runs tasks: nested dispatch runs inline.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The most threads a pool may have (`cnx --threads`, the C API's `P_set_threads`): already
/// far past any core count, and each thread costs a stack.
pub const MAX_THREADS: usize = 1024;

/// Runs `f` on the calling thread with the pool of `threads` threads as the current pool.
/// Should the system refuse to start threads, the pool is smaller (results are the same).
pub fn install<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let pool = pool(threads.max(1));
    let previous = CURRENT.with(|c| c.replace(Some(pool)));
    // Restore the previous pool even if `f` panics.
    struct Restore(Option<Arc<Pool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The thread count of the current pool (1 outside [`install`] and inside a task).
pub fn threads() -> usize {
    if IN_TASK.with(|t| t.get()) {
        return 1;
    }
    CURRENT.with(|c| c.borrow().as_ref().map_or(1, |p| p.threads))
}

/// Runs `task(0) .. task(tasks - 1)`, spread over the current pool's threads (the calling
/// thread included); returns when all have run. Inline, in order, with one thread. Task `i`
/// belongs to thread `i % threads` (the caller is thread 0), which runs it unless it is still
/// unstarted when another thread has finished its own (see `run_tasks`).
pub fn parallel_for(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    dispatch(tasks, task, Steal::Yes)
}

/// [`parallel_for`] where every thread runs exactly its own tasks (`t, t + threads, ...`), no
/// other: slower when a core is busy, but after it every thread has run a task of the set
/// (what sizes a thread's scratch for such tasks, so that later sets, stealing, allocate
/// nothing).
pub fn parallel_for_own(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    dispatch(tasks, task, Steal::No)
}

/// Whether a thread done with its own tasks takes others' unstarted ones.
#[derive(Clone, Copy, PartialEq)]
enum Steal {
    Yes,
    No,
}

fn dispatch(tasks: usize, task: &(dyn Fn(usize) + Sync), steal: Steal) {
    let pool = if threads() > 1 && tasks > 1 {
        CURRENT.with(|c| c.borrow().clone())
    } else {
        None
    };
    match pool {
        Some(pool) => pool.run(tasks, task, steal),
        None => {
            let outer = IN_TASK.with(|t| t.replace(true));
            (0..tasks).for_each(task);
            IN_TASK.with(|t| t.set(outer));
        }
    }
}

/// Runs `task(i, chunk_i)` for each `chunk_len`-element chunk of `data` (the last may be
/// shorter), over the current pool.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    task: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk_len = chunk_len.max(1);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    parallel_for(len.div_ceil(chunk_len), &|i| {
        let start = i * chunk_len;
        let n = chunk_len.min(len - start);
        let base = &base;
        // SAFETY: `parallel_for` runs each index exactly once, and chunk `i` covers
        // `start..start + n`, inside `data` and disjoint from every other chunk; `data` is
        // mutably borrowed for the whole call, so no one else reads or writes it meanwhile.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), n) };
        task(i, chunk)
    });
}

/// A task of [`for_each_region_pair_mut`]: its index and its regions of the two buffers.
pub type RegionPairTask<'f, A, B> = dyn Fn(usize, &mut [A], &mut [B]) + Sync + 'f;

/// Runs `task(i, &mut a[ra], &mut b[rb])` with `(ra, rb) = regions(i)` for each `i < tasks`,
/// over the current pool. Each buffer's regions must be in bounds, in increasing order and
/// disjoint (checked before any task runs; panics otherwise): uneven splits, such as a
/// GEMM's row blocks with their per-block partial sums.
///
/// # Safety
/// `regions` must be a pure function of `i` (it is called once to check the regions and again
/// in each task: a closure returning other regions the second time could alias).
pub unsafe fn for_each_region_pair_mut<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    tasks: usize,
    regions: &(dyn Fn(usize) -> (Range<usize>, Range<usize>) + Sync),
    task: &RegionPairTask<'_, A, B>,
) {
    let (mut a_end, mut b_end) = (0, 0);
    for i in 0..tasks {
        let (ra, rb) = regions(i);
        assert!(
            ra.start >= a_end && ra.start <= ra.end && rb.start >= b_end && rb.start <= rb.end,
            "task {i}'s regions overlap an earlier task's or are reversed"
        );
        (a_end, b_end) = (ra.end, rb.end);
    }
    assert!(
        a_end <= a.len() && b_end <= b.len(),
        "regions out of bounds"
    );
    let (pa, pb) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    parallel_for(tasks, &|i| {
        let (ra, rb) = regions(i);
        let (pa, pb) = (&pa, &pb);
        // SAFETY: checked above: every region lies inside its buffer and no two tasks'
        // regions overlap (`regions` returns the same here: the caller's contract); each
        // index runs exactly once; both buffers are mutably borrowed for the whole call.
        let (sa, sb) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.0.add(ra.start), ra.len()),
                std::slice::from_raw_parts_mut(pb.0.add(rb.start), rb.len()),
            )
        };
        task(i, sa, sb)
    });
}

/// `f(0) .. f(n - 1)` computed over the current pool, in index order (allocates: for loading,
/// not for forward passes).
pub fn parallel_map<T: Send>(n: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for_each_chunk_mut(&mut slots, 1, &|i, slot| slot[0] = Some(f(i)));
    slots
        .into_iter()
        .map(|s| s.expect("every index ran"))
        .collect()
}

/// A raw pointer that may cross threads (the user guarantees disjoint access).
struct SendPtr<T>(*mut T);
// SAFETY: only used by `for_each_chunk_mut`, whose tasks touch disjoint elements.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// A task set being run: the erased task (its indices are in `Shared::lists`).
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync + 'static),
    /// The pool's thread count: the stride of each thread's task indices.
    threads: usize,
    steal: Steal,
}

// SAFETY: the pointee is `Sync` and outlives every use (see `Pool::run`).
unsafe impl Send for Job {}

struct Shared {
    job: Mutex<Option<Job>>,
    wake: Condvar,
    /// Bumped (under `job`'s lock) for each task set.
    generation: AtomicU64,
    /// Workers that have not finished the current task set.
    busy: AtomicUsize,
    /// Per thread, the unclaimed part of its task list for the current set: positions
    /// `front..back` (packed `front << 32 | back`); see [`claim`].
    lists: Box<[AtomicU64]>,
    done: Mutex<()>,
    done_cv: Condvar,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

struct Pool {
    /// The thread count asked for (the pool's key).
    requested: usize,
    /// Threads actually running tasks: the workers that started, plus the caller.
    threads: usize,
    workers: usize,
    shared: Arc<Shared>,
    /// One task set at a time (two callers on one pool take turns).
    dispatch: Mutex<()>,
}

/// How long a waiting thread spins before it sleeps: covers the gap between two ops.
const SPIN: u32 = 1 << 14;

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            wake: Condvar::new(),
            generation: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            lists: (0..threads.max(1)).map(|_| AtomicU64::new(0)).collect(),
            done: Mutex::new(()),
            done_cv: Condvar::new(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = 0;
        for _ in 1..threads {
            let shared = shared.clone();
            // Worker indices stay contiguous even if a spawn fails.
            let index = workers + 1;
            let started = std::thread::Builder::new()
                .name(format!("cnx-worker-{index}"))
                .spawn(move || worker(&shared, index));
            if started.is_ok() {
                workers += 1;
            }
        }
        Pool {
            requested: threads,
            threads: workers + 1,
            workers,
            shared,
            dispatch: Mutex::new(()),
        }
    }

    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync), steal: Steal) {
        let s = &*self.shared;
        // A list's positions are packed in 32 bits.
        assert!(tasks < 1 << 32, "{tasks} tasks in one set");
        let _turn = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY (lifetime erasure): `run` returns only once `busy` is 0, i.e. once every
        // worker has stopped using `task` for this generation (also when a task panics:
        // panics are caught and re-raised after the wait).
        let erased: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute(task as *const (dyn Fn(usize) + Sync)) };
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            *job = Some(Job {
                task: erased,
                threads: self.threads,
                steal,
            });
            s.busy.store(self.workers, Ordering::Relaxed);
            for (t, list) in s.lists.iter().enumerate().take(self.threads) {
                list.store(own_tasks(tasks, t, self.threads) as u64, Ordering::Relaxed);
            }
            s.panicked.store(false, Ordering::Relaxed);
            s.generation.fetch_add(1, Ordering::Release);
        }
        s.wake.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| {
            IN_TASK.with(|t| t.set(true));
            run_tasks(task, &s.lists, 0, self.threads, steal);
            IN_TASK.with(|t| t.set(false));
        }));
        IN_TASK.with(|t| t.set(false));
        let mut spins = 0;
        while s.busy.load(Ordering::Acquire) != 0 {
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let guard = s.done.lock().unwrap_or_else(|e| e.into_inner());
            if s.busy.load(Ordering::Acquire) != 0 {
                drop(s.done_cv.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if s.panicked.load(Ordering::Acquire) {
            panic!("a kernel task panicked on a pool thread");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _job = self.shared.job.lock();
        self.shared.wake.notify_all();
    }
}

/// How many of `tasks` thread `t` of `threads` owns: `t, t + threads, ...`.
fn own_tasks(tasks: usize, t: usize, threads: usize) -> usize {
    tasks.saturating_sub(t).div_ceil(threads)
}

/// Thread `index` runs its own tasks in order, then takes unstarted tasks from the back of
/// the others' lists. It steals only if it ran a task of its own first: then it has run a
/// whole-size task of this set (only the last task of a set may be smaller, and a thread
/// whose own list is just that one has nothing to steal: every list then holds one task),
/// so the scratch buffers sized by the first pass fit and a warm pass allocates nothing.
fn run_tasks(
    task: &(dyn Fn(usize) + Sync),
    lists: &[AtomicU64],
    index: usize,
    threads: usize,
    steal: Steal,
) {
    let mut ran_own = false;
    while let Some(pos) = claim(&lists[index], Claim::Front) {
        ran_own = true;
        task(index + pos * threads);
    }
    if !ran_own || steal == Steal::No {
        return;
    }
    for victim in (1..threads).map(|d| (index + d) % threads) {
        while let Some(pos) = claim(&lists[victim], Claim::Back) {
            task(victim + pos * threads);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Claim {
    /// The owner, in order.
    Front,
    /// Another thread, from the end.
    Back,
}

/// Takes one position of a list (`front << 32 | back`), or `None` when none is left to take.
fn claim(list: &AtomicU64, side: Claim) -> Option<usize> {
    let mut current = list.load(Ordering::Acquire);
    loop {
        let (front, back) = (current >> 32, current & 0xffff_ffff);
        if front >= back {
            return None;
        }
        let (next, pos) = match side {
            Claim::Front => (((front + 1) << 32) | back, front),
            Claim::Back => ((front << 32) | (back - 1), back - 1),
        };
        match list.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(pos as usize),
            Err(seen) => current = seen,
        }
    }
}

fn worker(s: &Shared, index: usize) {
    IN_TASK.with(|t| t.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a new task set: spin a little, then sleep.
        let mut spins = 0;
        while s.generation.load(Ordering::Acquire) == seen && spins < SPIN {
            spins += 1;
            std::hint::spin_loop();
        }
        let job = {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            while s.generation.load(Ordering::Acquire) == seen
                && !s.shutdown.load(Ordering::Acquire)
            {
                job = s.wake.wait(job).unwrap_or_else(|e| e.into_inner());
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            seen = s.generation.load(Ordering::Acquire);
            *job
        };
        if let Some(job) = job {
            // SAFETY: the caller of `run` keeps the task alive until `busy` reaches 0, which
            // happens only after this use (the decrement below).
            let task = unsafe { &*job.task };
            let ran = catch_unwind(AssertUnwindSafe(|| {
                run_tasks(task, &s.lists, index, job.threads, job.steal)
            }));
            if ran.is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        if s.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _guard = s.done.lock().unwrap_or_else(|e| e.into_inner());
            s.done_cv.notify_all();
        }
    }
}

fn pool(threads: usize) -> Arc<Pool> {
    type Pools = Mutex<Vec<Arc<Pool>>>;
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    // A poisoned lock only means another thread panicked while holding it; the list is
    // still valid (a push either happened or did not).
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.iter().find(|p| p.requested == threads) {
        return p.clone();
    }
    let pool = Arc::new(Pool::new(threads));
    pools.push(pool.clone());
    pool
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once_on_the_pool() {
        assert_eq!(super::threads(), 1);
        for threads in [1, 2, 3] {
            super::install(threads, || {
                assert_eq!(super::threads(), threads);
                for tasks in [0, 1, 2, 7, 100] {
                    let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    super::parallel_for(tasks, &|i| {
                        // Inside a task, dispatch is inline.
                        assert_eq!(super::threads(), 1);
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                }
            });
        }
        assert_eq!(super::threads(), 1);
    }

    #[test]
    fn chunks_cover_the_data_once() {
        let mut data = vec![0u32; 1001];
        super::install(3, || {
            super::for_each_chunk_mut(&mut data, 100, &|i, chunk| {
                chunk.iter_mut().for_each(|v| *v += i as u32 + 1)
            })
        });
        assert!(data
            .iter()
            .enumerate()
            .all(|(j, &v)| v == (j / 100) as u32 + 1));
    }

    #[test]
    fn a_thread_that_finishes_first_takes_the_others_unstarted_tasks() {
        use std::sync::atomic::AtomicBool;
        // Thread 1's first task blocks until every other task has run: only stealing
        // lets the set finish (thread 0 takes thread 1's remaining tasks from the back).
        let ran: Vec<AtomicBool> = (0..9).map(|_| AtomicBool::new(false)).collect();
        let all_but_one = || {
            ran.iter()
                .enumerate()
                .all(|(i, r)| i == 1 || r.load(Ordering::Acquire))
        };
        super::install(2, || {
            super::parallel_for(9, &|i| {
                if i == 1 {
                    let start = std::time::Instant::now();
                    while !all_but_one() {
                        assert!(start.elapsed().as_secs() < 60, "no task was stolen");
                        std::thread::yield_now();
                    }
                }
                ran[i].store(true, Ordering::Release);
            })
        });
        assert!(ran.iter().all(|r| r.load(Ordering::Acquire)));
    }

    #[test]
    fn claims_take_each_position_once_from_either_end() {
        use super::{claim, Claim};
        let list = AtomicU64::new(4);
        assert_eq!(claim(&list, Claim::Front), Some(0));
        assert_eq!(claim(&list, Claim::Back), Some(3));
        assert_eq!(claim(&list, Claim::Back), Some(2));
        assert_eq!(claim(&list, Claim::Front), Some(1));
        assert_eq!(claim(&list, Claim::Front), None);
        assert_eq!(claim(&list, Claim::Back), None);
        assert_eq!(super::own_tasks(9, 0, 2), 5);
        assert_eq!(super::own_tasks(9, 1, 2), 4);
        assert_eq!(super::own_tasks(1, 2, 3), 0);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            super::install(2, || super::parallel_for(4, &|i| assert!(i != 3, "task 3")))
        });
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        super::install(2, || {
            super::parallel_for(5, &|_| {
                n.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }
}
