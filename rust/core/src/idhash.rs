//! A fast hasher for maps keyed by ids the process assigns itself (job ids,
//! tree ids): the default SipHash guards against adversarial keys these maps
//! never see, and costs a large share of a scheduler call.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// MurmurHash3's 64-bit finaliser over the key: every key bit reaches both the
/// low bits that pick the bucket and the high bits the table's control bytes
/// use, in two multiplications (SipHash takes dozens of rounds).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mut x = self.0.rotate_left(29) ^ n;
        x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = x ^ (x >> 33);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets() {
        let hash = |n: u64| {
            let mut h = IdHasher::default();
            h.write_u64(n);
            h.finish()
        };
        let low: std::collections::BTreeSet<u64> = (0..4096).map(|n| hash(n) & 4095).collect();
        let high: std::collections::BTreeSet<u64> = (0..4096).map(|n| hash(n) >> 52).collect();
        assert!(high.len() > 2450, "{} distinct top bits of 4096", high.len());
        // Random hashing gives about 2589 (4096 x (1 - 1/e)).
        assert!(low.len() > 2450, "{} distinct buckets of 4096", low.len());
        let mut map: IdMap<u64> = IdMap::default();
        for n in 0..10_000 {
            map.insert(n, n * 2);
        }
        assert!((0..10_000).all(|n| map[&n] == n * 2));
    }
}
