//! The released events' log: a deque in fixed-size chunks.
//!
//! A `VecDeque` of a million slots doubles by allocating the new buffer and copying the
//! old one into it, so at that moment it holds both: 24 MiB more peak RSS than its
//! capacity at the half-million mark, all of it above `max_queue_memory`. Chunks never
//! move: the log grows one chunk at a time, and a chunk every reader has passed is freed
//! whole.

use std::collections::VecDeque;

/// Slots per chunk: 192 KiB of 48-byte slots.
const CHUNK: usize = 4096;

#[derive(Debug)]
pub(super) struct Log<T> {
    /// Each holds at most `CHUNK` and never grows past it; all but the first and last
    /// are full.
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Log<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated, for the memory estimate.
    pub(super) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    pub(super) fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub(super) fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let item = first.pop_front()?;
        if first.is_empty() {
            self.chunks.pop_front();
        }
        self.len -= 1;
        Some(item)
    }

    pub(super) fn back(&self) -> Option<&T> {
        self.chunks.back()?.back()
    }

    /// Chunk and offset of position `idx`.
    fn locate(&self, idx: usize) -> Option<(usize, usize)> {
        if idx >= self.len {
            return None;
        }
        let first = self.chunks.front()?.len();
        Some(if idx < first {
            (0, idx)
        } else {
            let rest = idx - first;
            (1 + rest / CHUNK, rest % CHUNK)
        })
    }

    pub(super) fn get(&self, idx: usize) -> Option<&T> {
        let (c, i) = self.locate(idx)?;
        self.chunks[c].get(i)
    }

    pub(super) fn get_mut(&mut self, idx: usize) -> Option<&mut T> {
        let (c, i) = self.locate(idx)?;
        self.chunks[c].get_mut(i)
    }

    /// The slots from position `from` on, in order.
    pub(super) fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        let start = self.locate(from);
        let (c, i) = start.unwrap_or((self.chunks.len(), 0));
        self.chunks
            .range(c.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(k, chunk)| chunk.range(if k == 0 { i } else { 0 }..))
    }

    /// Remove the slots from position `from` on and return them in order.
    pub(super) fn split_off(&mut self, from: usize) -> Vec<T> {
        let mut tail = Vec::with_capacity(self.len.saturating_sub(from));
        while self.len > from {
            let Some(last) = self.chunks.back_mut() else {
                break;
            };
            let Some(item) = last.pop_back() else {
                self.chunks.pop_back();
                continue;
            };
            if last.is_empty() {
                self.chunks.pop_back();
            }
            self.len -= 1;
            tail.push(item);
        }
        tail.reverse();
        tail
    }
}

impl<T> std::ops::Index<usize> for Log<T> {
    type Output = T;
    fn index(&self, idx: usize) -> &T {
        self.get(idx).expect("log index in range")
    }
}

impl<T> std::ops::IndexMut<usize> for Log<T> {
    fn index_mut(&mut self, idx: usize) -> &mut T {
        self.get_mut(idx).expect("log index in range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_deque_across_chunk_edges() {
        let mut log = Log::default();
        let mut model = VecDeque::new();
        let mut x = 7u64;
        for step in 0..40_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 {
                assert_eq!(log.pop_front(), model.pop_front());
            } else {
                log.push_back(step);
                model.push_back(step);
            }
            assert_eq!(log.len(), model.len());
            if step % 997 == 0 && !model.is_empty() {
                let k = (x as usize) % model.len();
                assert_eq!(log.get(k), model.get(k));
                assert!(log.iter_from(k).eq(model.range(k..)));
                assert_eq!(log.back(), model.back());
                assert!(log.capacity() <= (log.len() / CHUNK + 2) * CHUNK);
            }
        }
        let k = model.len() / 3;
        let tail: Vec<u64> = model.drain(k..).collect();
        assert_eq!(log.split_off(k), tail);
        assert_eq!(log.len(), model.len());
        assert!(log.iter_from(0).eq(model.iter()));
        assert!(log.iter_from(log.len()).next().is_none());
    }
}
