//! The mark's set of live digests: a Bloom filter of fixed size, so the collector's memory
//! does not grow with the number of blobs. A false positive keeps garbage for a run; there
//! are no false negatives, so live content is never taken for garbage. Digests are already
//! uniformly random, so their bytes are the hash functions (double hashing over two words).

use crate::oci::Digest;

/// Bits per expected item (about 0.05% false positives with [`HASHES`]).
const BITS_PER_ITEM: u64 = 16;
/// Bit positions per item.
const HASHES: u64 = 8;
/// The smallest filter: 1 MiB.
const MIN_BITS: u64 = 1 << 23;
/// The largest: 32 MiB, whatever the store holds (false positives grow beyond 20M digests).
const MAX_BITS: u64 = 1 << 28;

/// A Bloom filter of digests.
pub struct Bloom {
    words: Vec<u64>,
    bits: u64,
}

impl Bloom {
    /// A filter sized for about `expected` digests (within the bounds above).
    pub fn for_items(expected: u64) -> Self {
        let bits = expected.saturating_mul(BITS_PER_ITEM).clamp(MIN_BITS, MAX_BITS).next_power_of_two();
        let words = usize::try_from(bits / 64).unwrap_or(usize::MAX / 8);
        Self { words: vec![0; words], bits }
    }

    fn positions(&self, digest: &Digest) -> impl Iterator<Item = u64> + '_ {
        let hex = digest.hex();
        let word = |range: std::ops::Range<usize>| u64::from_str_radix(hex.get(range).unwrap_or("0"), 16).unwrap_or(0);
        let (a, b) = (word(0..16), word(16..32) | 1);
        let mask = self.bits.saturating_sub(1);
        (0..HASHES).map(move |i| a.wrapping_add(i.wrapping_mul(b)) & mask)
    }

    /// Adds a digest.
    pub fn insert(&mut self, digest: &Digest) {
        let positions: Vec<u64> = self.positions(digest).collect();
        for p in positions {
            if let Some(w) = self.words.get_mut(usize::try_from(p / 64).unwrap_or(usize::MAX)) {
                *w |= 1 << (p % 64);
            }
        }
    }

    /// Whether a digest may have been added (never false for one that was).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.positions(digest).all(|p| {
            self.words.get(usize::try_from(p / 64).unwrap_or(usize::MAX)).is_some_and(|w| w & (1 << (p % 64)) != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u64) -> Digest {
        let mut h = crate::oci::Hasher::new(crate::oci::DigestAlgorithm::Sha256);
        h.update(&n.to_le_bytes());
        h.finish()
    }

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut bloom = Bloom::for_items(100_000);
        for n in 0..100_000 {
            bloom.insert(&digest(n));
        }
        assert!((0..100_000).all(|n| bloom.contains(&digest(n))));
        let false_positives = (100_000..200_000).filter(|n| bloom.contains(&digest(*n))).count();
        assert!(false_positives < 200, "{false_positives} false positives in 100,000");
    }
}
