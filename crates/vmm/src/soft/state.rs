//! Migratable per-vCPU state and the deterministic data generator.
//!
//! A vCPU's behaviour is a pure function of its [`SoftCpuState`] and the [`super::WorkloadConfig`]:
//! the page it writes next comes from `position` (sequential) or `rng` (random), and the words it
//! stores come from `(seed, vcpu, generation)`. Saving the state on the source and handing it to
//! [`super::SoftGuest::start_from`] on the destination therefore continues the exact same
//! sequence of writes.

/// State of one software vCPU (all `u64`, to be carried in a versioned device section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SoftCpuState {
    /// vCPU index.
    pub vcpu: u64,
    /// Number of page writes this vCPU has done since the workload first started (carried across
    /// migrations); also the input of the data generator.
    pub generation: u64,
    /// xorshift64* state for [`super::Pattern::Random`] (never 0).
    pub rng: u64,
    /// Index, within the vCPU's slice, of the next page for [`super::Pattern::Sequential`] (for
    /// `Random`, of the last page written).
    pub position: u64,
}

impl SoftCpuState {
    /// The initial state of vCPU `vcpu` for `seed`.
    pub fn initial(seed: u64, vcpu: u64) -> Self {
        SoftCpuState {
            vcpu,
            generation: 0,
            rng: splitmix64(seed ^ vcpu.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
            position: 0,
        }
    }

    /// Advances the state by one write over a slice of `slice_pages` pages; returns the index
    /// within the slice of the page to write and the value to store.
    pub fn step(&mut self, random: bool, slice_pages: u64, seed: u64) -> (u64, u64) {
        let idx = if random {
            self.rng = xorshift64star(self.rng);
            self.position = self.rng % slice_pages;
            self.position
        } else {
            let idx = self.position % slice_pages;
            self.position = (idx + 1) % slice_pages;
            idx
        };
        let value = word_for(seed, self.vcpu, self.generation);
        self.generation = self.generation.wrapping_add(1);
        (idx, value)
    }
}

/// The 64-bit word vCPU `vcpu` stores at `generation` (never zero).
pub fn word_for(seed: u64, vcpu: u64, generation: u64) -> u64 {
    splitmix64(
        seed ^ splitmix64(vcpu.wrapping_add(0x5bd1_e995)) ^ generation.wrapping_mul(0xff51_afd7),
    ) | 1
}

/// SplitMix64 finaliser: a fast, well-mixed 64-bit hash.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn xorshift64star(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_wraps_and_counts() {
        let mut s = SoftCpuState::initial(1, 0);
        let idx: Vec<u64> = (0..5).map(|_| s.step(false, 3, 1).0).collect();
        assert_eq!(idx, vec![0, 1, 2, 0, 1]);
        assert_eq!(s.generation, 5);
        assert_eq!(s.position, 2);
    }

    #[test]
    fn random_is_reproducible_and_in_range() {
        let mut a = SoftCpuState::initial(7, 2);
        let mut b = a;
        for _ in 0..1000 {
            let x = a.step(true, 10, 7);
            assert_eq!(x, b.step(true, 10, 7));
            assert!(x.0 < 10);
            assert_ne!(x.1, 0);
        }
        assert_ne!(SoftCpuState::initial(7, 2), SoftCpuState::initial(7, 3));
    }
}
