//! The thread pool: one rayon pool per thread count, created on first use and kept for the
//! life of the process, so that a forward pass never spawns a thread.
//!
//! Backends run a whole forward pass inside [`install`]; the ops split their work by
//! [`threads`] (the pool's size) in a way that computes every element exactly as one thread
//! would, so results do not depend on the thread count.

use std::sync::{Arc, Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// The machine's cores, the default thread count.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` on the pool of `threads` threads (created once per count). Should the system
/// refuse to start threads, `f` runs on the calling thread instead.
pub fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    match pool(threads.max(1)) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// The thread count of the pool the caller runs on (1 outside any pool of ours).
pub fn threads() -> usize {
    match rayon::current_thread_index() {
        Some(_) => rayon::current_num_threads(),
        None => 1,
    }
}

/// Runs `task` on every item, one pool task per item (on the calling thread, in order, when
/// the pool has one thread or there is only one item).
pub fn run_each<T: Send>(items: Vec<T>, task: impl Fn(T) + Sync) {
    if threads() == 1 || items.len() <= 1 {
        items.into_iter().for_each(task);
        return;
    }
    let task = &task;
    rayon::scope(|scope| {
        for item in items {
            scope.spawn(move |_| task(item));
        }
    });
}

fn pool(threads: usize) -> Option<Arc<ThreadPool>> {
    type Pools = Mutex<Vec<(usize, Arc<ThreadPool>)>>;
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    // A poisoned lock only means another thread panicked while holding it; the list is
    // still valid (a push either happened or did not).
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == threads) {
        return Some(p.clone());
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cnx-worker-{i}"))
        .build()
        .ok()?;
    let pool = Arc::new(pool);
    pools.push((threads, pool.clone()));
    Some(pool)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pool_is_made_once_per_thread_count() {
        assert_eq!(super::threads(), 1);
        let ids: Vec<_> = (0..3)
            .map(|_| super::install(2, || (super::threads(), std::thread::current().id())))
            .collect();
        assert!(ids.iter().all(|(n, _)| *n == 2));
        // Pool threads persist: the same worker names come back.
        let name = super::install(2, || std::thread::current().name().map(str::to_owned));
        assert!(name.unwrap().starts_with("cnx-worker-"));
    }
}
