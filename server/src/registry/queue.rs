//! A socket's outbound queue: bounded, FIFO, and small while idle (tokio's
//! bounded channel allocates a 32-slot block per socket up front; this one
//! allocates only as frames wait, and gives the room back once drained).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Capacity kept after the queue drains; more is given back.
const IDLE_CAPACITY: usize = 8;

pub struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    /// Set when the consumer fell too far behind: the socket is to be dropped.
    evicted: AtomicBool,
    gone: Notify,
}

/// What became of a pushed item.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full: this push evicted the consumer (reported once).
    Evicted,
    /// The consumer had already been evicted; the item is dropped.
    Dropped,
}

impl<T> Queue<T> {
    pub fn new(capacity: usize) -> Queue<T> {
        Queue {
            items: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
            evicted: AtomicBool::new(false),
            gone: Notify::new(),
        }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an item; a full queue evicts its consumer instead.
    pub fn push(&self, item: T) -> Push {
        if self.is_evicted() {
            return Push::Dropped;
        }
        let mut items = self.items();
        if items.len() >= self.capacity {
            items.clear();
            drop(items);
            return if self.evict() { Push::Evicted } else { Push::Dropped };
        }
        items.push_back(item);
        drop(items);
        self.ready.notify_one();
        Push::Queued
    }

    /// Evicts the consumer (a full queue, or a write that timed out); `true`
    /// the first time. Queued items are discarded as the consumer stops.
    pub fn evict(&self) -> bool {
        let first = !self.evicted.swap(true, Ordering::AcqRel);
        if first {
            self.ready.notify_one();
            self.gone.notify_waiters();
        }
        first
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Resolves once the consumer is evicted, so a blocked write can give up.
    pub async fn evicted(&self) {
        let mut notified = pin!(self.gone.notified());
        loop {
            notified.as_mut().enable();
            if self.is_evicted() {
                return;
            }
            notified.as_mut().await;
            notified.set(self.gone.notified());
        }
    }

    /// The next item without waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut items = self.items();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > IDLE_CAPACITY {
            items.shrink_to(IDLE_CAPACITY);
        }
        item
    }

    /// The next item; `None` once the consumer was evicted. Cancel-safe: an
    /// item is taken only when this returns it.
    pub async fn pop(&self) -> Option<T> {
        loop {
            if self.is_evicted() {
                return None;
            }
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            // A push between the check and here leaves a permit, so this returns at once.
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_until_full_then_evicted_once() {
        let queue = Queue::new(3);
        for i in 0..3 {
            assert_eq!(queue.push(i), Push::Queued);
        }
        assert_eq!(queue.pop().await, Some(0));
        assert_eq!(queue.push(3), Push::Queued);
        assert_eq!(queue.push(4), Push::Evicted, "over capacity");
        assert_eq!(queue.push(5), Push::Dropped, "eviction is reported once");
        assert_eq!(queue.pop().await, None, "an evicted consumer gets nothing more");
        queue.evicted().await;
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_push_and_on_eviction() {
        let queue = std::sync::Arc::new(Queue::new(4));
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(queue.push("frame"), Push::Queued);
        assert_eq!(consumer.await.unwrap(), Some("frame"));
        let watcher = tokio::spawn({
            let queue = queue.clone();
            async move { queue.evicted().await }
        });
        tokio::task::yield_now().await;
        assert!(queue.evict());
        watcher.await.unwrap();
        assert!(!queue.evict(), "evicted once");
    }
}
