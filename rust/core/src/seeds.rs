//! Per-turn sampling seeds, computed in bulk for the engine's scheduling step.

const MASK31: u64 = (1 << 31) - 1;

/// The sampling seed of one turn: SplitMix64's finaliser over (conversation
/// seed, branch, turn), below 2**31. Equals `turnloom.seeds.turn_seed`, whose
/// arithmetic is modulo 2**64 like this one's.
pub fn turn_seed(conversation_seed: u64, branch: u64, turn: u64) -> u64 {
    let step = 1u64.wrapping_add(branch << 32).wrapping_add(turn);
    let mut x = conversation_seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(step));
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) & MASK31
}

#[cfg(test)]
mod tests {
    use super::turn_seed;

    #[test]
    fn equals_the_python_definition() {
        // Values of turnloom.seeds.turn_seed.
        let cases = [
            ((0, 0, 0), 2_065_550_767),
            ((123_456_789, 0, 7), 433_275_740),
            (((1 << 63) - 1, 5, 3), 1_195_467_377),
            ((987_654_321_987_654_321, 12, 1000), 1_996_736_149),
            ((u64::MAX, (1 << 40) + 3, 99), 1_822_084_706),
        ];
        for ((seed, branch, turn), want) in cases {
            assert_eq!(turn_seed(seed, branch, turn), want, "{seed} {branch} {turn}");
        }
    }
}
