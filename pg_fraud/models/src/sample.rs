//! Uniform sampling of a stream whose length is unknown in advance, for training sets drawn
//! from a table scanned once in time order.

use crate::rng::TrainRng;

/// At most `capacity` items, each item offered so far kept with equal probability
/// (Vitter's Algorithm R). Deterministic for a seed and an offering order.
pub struct Reservoir<T> {
    capacity: usize,
    seen: u64,
    items: Vec<T>,
    rng: TrainRng,
}

impl<T> Reservoir<T> {
    /// An empty reservoir that keeps up to `capacity` items.
    pub fn new(capacity: usize, seed: u64) -> Self {
        Reservoir { capacity, seen: 0, items: Vec::new(), rng: TrainRng::new(seed) }
    }

    /// Offers one item; `make` runs only when the item is kept, so rejected rows cost nothing.
    pub fn offer(&mut self, make: impl FnOnce() -> T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(make());
        } else if self.capacity > 0 {
            let j = self.rng.below(usize::try_from(self.seen).unwrap_or(usize::MAX));
            if j < self.capacity {
                self.items[j] = make();
            }
        }
    }

    /// Items offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Items kept.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The kept items, in no particular order.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_capacity() {
        let mut r = Reservoir::new(10, 1);
        (0..7).for_each(|i| r.offer(|| i));
        assert_eq!(r.seen(), 7);
        assert_eq!(r.into_items(), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut r = Reservoir::new(0, 1);
        (0..5).for_each(|i| r.offer(|| i));
        assert!(r.is_empty());
        assert_eq!(r.seen(), 5);
    }

    #[test]
    fn sample_is_uniform_over_the_stream() {
        // Each of 100 items should be kept about 10% of the time with capacity 10.
        let mut hits = [0u32; 100];
        for seed in 0..2000 {
            let mut r = Reservoir::new(10, seed);
            (0..100).for_each(|i| r.offer(|| i));
            assert_eq!(r.len(), 10);
            r.into_items().into_iter().for_each(|i| hits[i] += 1);
        }
        // Expected 200 per item; early and late items alike.
        assert!(hits.iter().all(|&h| (140..=260).contains(&h)), "{hits:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_sample() {
        let run = |seed| {
            let mut r = Reservoir::new(5, seed);
            (0..1000).for_each(|i| r.offer(|| i));
            r.into_items()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
