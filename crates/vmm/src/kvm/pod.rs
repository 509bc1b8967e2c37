//! Raw byte views of KVM ABI structs, for state fields stored as `buffer`s.
//!
//! The structs below are `#[repr(C)]` plain data from kvm-bindings (integers and arrays of
//! integers, no pointers, no padding-sensitive invariants): every byte pattern of the right size
//! is a valid value, which is what makes both directions sound. The bytes are the x86_64 (little
//! endian) KVM ABI layout; a migration stream is therefore only loadable by an x86_64 host,
//! which is the only kind that can run the guest anyway.

use kvm_bindings::{kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_pit_state2};

/// Marker for plain-old-data KVM structs.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain no pointers or references, and accept every
/// byte pattern of their size as a valid value.
pub(crate) unsafe trait Pod: Copy + Default {}

// SAFETY: all of these are bindgen-generated #[repr(C)] structs/unions of integers and integer
// arrays; any bit pattern is a valid value.
unsafe impl Pod for kvm_fpu {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}

/// The bytes of `v`.
pub(crate) fn to_bytes<T: Pod>(v: &T) -> Vec<u8> {
    let mut out = vec![0u8; std::mem::size_of::<T>()];
    // SAFETY: `out` has exactly size_of::<T>() bytes, `v` is a valid T, and T is Pod, so every
    // byte of it (padding included, which bindgen structs make explicit) may be read.
    unsafe {
        std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), out.as_mut_ptr(), out.len());
    }
    out
}

/// A `T` from exactly `size_of::<T>()` bytes, or None if the length differs.
pub(crate) fn from_bytes<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: the length was checked above, T is Pod so any bytes form a valid value, and `v`
    // is a distinct local that does not overlap `bytes`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), bytes.len());
    }
    Some(v)
}

/// Size of `T` (the length of its buffer field).
pub(crate) const fn size<T: Pod>() -> usize {
    std::mem::size_of::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length_check() {
        let mut p = kvm_pit_state2 {
            flags: 1,
            ..Default::default()
        };
        p.channels[2].count = 0x1234;
        let b = to_bytes(&p);
        assert_eq!(b.len(), size::<kvm_pit_state2>());
        let back: kvm_pit_state2 = from_bytes(&b).unwrap();
        assert_eq!(back.flags, 1);
        assert_eq!(back.channels[2].count, 0x1234);
        assert!(from_bytes::<kvm_pit_state2>(&b[1..]).is_none());
    }
}
