//! A plain one-bit-per-page bitmap.
//!
//! Bit `n` lives in word `n / 64` at bit position `n % 64` (least significant bit first), which is
//! also the layout of KVM's `KVM_GET_DIRTY_LOG` buffer on little-endian hosts, so a KVM dirty log
//! can be ORed into [`Bitmap::words_mut`] directly. Bits at or beyond [`Bitmap::len`] in the last
//! word are always kept clear, so [`Bitmap::count_ones`] and [`Bitmap::next_set`] never see them.

/// One bit per guest page, stored as `u64` words.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    bits: u64,
}

impl Bitmap {
    /// Creates a bitmap of `bits` bits, all clear.
    pub fn new(bits: u64) -> Self {
        let words = bits.div_ceil(64) as usize;
        Bitmap {
            words: vec![0; words],
            bits,
        }
    }

    /// Number of bits (pages) in the bitmap.
    pub fn len(&self) -> u64 {
        self.bits
    }

    /// True if the bitmap holds no bits at all.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The backing words (bit `n` is `words[n / 64] >> (n % 64) & 1`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Mutable access to the backing words.
    ///
    /// Callers must not set bits at or beyond [`Bitmap::len`]; use [`Bitmap::trim`] after bulk
    /// edits if unsure.
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Clears any bits at or beyond [`Bitmap::len`] in the last word.
    pub fn trim(&mut self) {
        let rem = self.bits % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    #[inline]
    fn check(&self, bit: u64) {
        assert!(
            bit < self.bits,
            "bit {bit} out of range for a bitmap of {} bits",
            self.bits
        );
    }

    /// Sets `bit`; returns true if it was clear before.
    ///
    /// # Panics
    /// If `bit >= len()` (like slice indexing; validate page numbers from the wire first).
    #[inline]
    pub fn set(&mut self, bit: u64) -> bool {
        self.check(bit);
        let w = &mut self.words[(bit / 64) as usize];
        let mask = 1u64 << (bit % 64);
        let was = *w & mask != 0;
        *w |= mask;
        !was
    }

    /// Clears `bit`.
    ///
    /// # Panics
    /// If `bit >= len()`.
    #[inline]
    pub fn clear(&mut self, bit: u64) {
        self.check(bit);
        self.words[(bit / 64) as usize] &= !(1u64 << (bit % 64));
    }

    /// Returns whether `bit` is set; bits beyond `len()` read as clear.
    #[inline]
    pub fn test(&self, bit: u64) -> bool {
        if bit >= self.bits {
            return false;
        }
        self.words[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0
    }

    /// Clears `bit` and returns whether it was set; bits beyond `len()` read as clear.
    #[inline]
    pub fn test_and_clear(&mut self, bit: u64) -> bool {
        if bit >= self.bits {
            return false;
        }
        let w = &mut self.words[(bit / 64) as usize];
        let mask = 1u64 << (bit % 64);
        let was = *w & mask != 0;
        *w &= !mask;
        was
    }

    /// Sets every bit.
    pub fn set_all(&mut self) {
        self.words.fill(u64::MAX);
        self.trim();
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
    }

    /// Sets the bits `start..end` (clamped to `len()`); returns how many were clear before.
    pub fn set_range(&mut self, start: u64, end: u64) -> u64 {
        let end = end.min(self.bits);
        if start >= end {
            return 0;
        }
        let mut newly = 0u64;
        let mut bit = start;
        while bit < end {
            let wi = (bit / 64) as usize;
            let lo = bit % 64;
            let hi = (end - (bit - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let w = &mut self.words[wi];
            newly += u64::from((mask & !*w).count_ones());
            *w |= mask;
            bit = bit - lo + hi;
        }
        newly
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The first set bit at or after `from`, if any.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.bits {
            return None;
        }
        let mut wi = (from / 64) as usize;
        let mut w = self.words[wi] & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                let bit = wi as u64 * 64 + u64::from(w.trailing_zeros());
                return (bit < self.bits).then_some(bit);
            }
            wi += 1;
            w = *self.words.get(wi)?;
        }
    }

    /// ORs `other` into `self`; returns the number of bits that were newly set.
    ///
    /// # Panics
    /// If the bitmaps have different lengths.
    pub fn or_assign(&mut self, other: &Bitmap) -> u64 {
        assert_eq!(self.bits, other.bits, "bitmap lengths differ");
        let mut newly = 0u64;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            newly += u64::from((b & !*a).count_ones());
            *a |= b;
        }
        newly
    }

    /// Iterates over the set bits in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        let mut next = self.next_set(0);
        std::iter::from_fn(move || {
            let cur = next?;
            next = self.next_set(cur + 1);
            Some(cur)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_test_clear() {
        let mut b = Bitmap::new(130);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(129));
        assert!(b.test(129));
        assert!(!b.test(130));
        assert_eq!(b.count_ones(), 2);
        b.clear(0);
        assert!(!b.test(0));
        assert!(b.test_and_clear(129));
        assert!(!b.test_and_clear(129));
        assert_eq!(b.count_ones(), 0);
    }

    #[test]
    fn set_all_respects_len() {
        let mut b = Bitmap::new(70);
        b.set_all();
        assert_eq!(b.count_ones(), 70);
        assert_eq!(b.next_set(69), Some(69));
        assert_eq!(b.next_set(70), None);
    }

    #[test]
    fn next_set_walks_words() {
        let mut b = Bitmap::new(1000);
        for bit in [3, 64, 65, 500, 999] {
            b.set(bit);
        }
        let got: Vec<u64> = b.iter_ones().collect();
        assert_eq!(got, vec![3, 64, 65, 500, 999]);
        assert_eq!(b.next_set(66), Some(500));
        assert_eq!(Bitmap::new(0).next_set(0), None);
    }

    #[test]
    fn set_range_counts_new_bits() {
        let mut b = Bitmap::new(300);
        b.set(10);
        assert_eq!(b.set_range(5, 200), 194);
        assert_eq!(b.count_ones(), 195);
        assert_eq!(b.set_range(0, 1000), 105);
        assert_eq!(b.count_ones(), 300);
        assert_eq!(b.set_range(7, 7), 0);
        let mut c = Bitmap::new(128);
        assert_eq!(c.set_range(0, 128), 128);
        assert_eq!(c.words(), &[u64::MAX, u64::MAX]);
    }

    #[test]
    fn or_assign_counts_new_bits() {
        let mut a = Bitmap::new(100);
        let mut b = Bitmap::new(100);
        a.set(1);
        b.set(1);
        b.set(99);
        assert_eq!(a.or_assign(&b), 1);
        assert!(a.test(99));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn set_out_of_range_panics() {
        Bitmap::new(10).set(10);
    }
}
