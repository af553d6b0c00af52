//! A socket's outbound queue: bounded, FIFO, and small while idle (tokio's
//! bounded channel allocates a 32-slot block per socket up front; this one
//! allocates only as frames wait, and gives the room back once drained).

use std::collections::VecDeque;
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
}

impl<T> Queue<T> {
    pub fn new(capacity: usize) -> Queue<T> {
        Queue { items: Mutex::new(VecDeque::new()), capacity, ready: Notify::new(), evicted: AtomicBool::new(false) }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an item; a full queue evicts its consumer instead (and says so).
    pub fn push(&self, item: T) -> Result<(), Full> {
        let mut items = self.items();
        if items.len() >= self.capacity {
            drop(items);
            self.evicted.store(true, Ordering::Release);
            self.ready.notify_one();
            return Err(Full);
        }
        items.push_back(item);
        drop(items);
        self.ready.notify_one();
        Ok(())
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
            if self.evicted.load(Ordering::Acquire) {
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

#[derive(Debug)]
pub struct Full;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_until_full_then_evicted() {
        let queue = Queue::new(3);
        for i in 0..3 {
            queue.push(i).unwrap();
        }
        assert_eq!(queue.pop().await, Some(0));
        queue.push(3).unwrap();
        assert!(queue.push(4).is_err(), "over capacity");
        assert_eq!(queue.pop().await, None, "an evicted consumer gets nothing more");
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_push() {
        let queue = std::sync::Arc::new(Queue::new(4));
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::task::yield_now().await;
        queue.push("frame").unwrap();
        assert_eq!(consumer.await.unwrap(), Some("frame"));
        assert_eq!(queue.try_pop(), None);
    }
}
