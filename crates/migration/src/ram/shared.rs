//! `x-ignore-shared` (QEMU 7.2): RAM blocks in shared memory are not sent; the destination
//! maps the same memory (a file on /dev/shm or hugetlbfs, both processes on one host), so a
//! same-host migration moves device state only, whatever the RAM size.
//!
//! What the capability changes on the wire (spec §2.3, §3.3):
//!
//! ```text
//! configuration record:  0x05 cstr8 "configuration/capabilities" be32 1  be32 1  cstr8 "x-ignore-shared"
//! ram START (MEM_SIZE):  be64 total|MEM_SIZE        ; total still counts the skipped blocks
//!                        per block: cstr8 idstr  be64 used_length  be64 mr_addr   ; GPA, every block
//! ram PART/END:          no page record for a skipped block
//! ```
//!
//! Each side decides from its *own* block which blocks are skipped (QEMU's
//! `ramblock_is_ignored`: the capability is on and the block is shared memory). The destination
//! checks what it can: the capability is on on both sides (configuration record), a skipped
//! block has the same guest physical address on both sides, no page arrives for a block it
//! skips, and a block it skips is memory another process can reach (a memfd created by this
//! process is not). A source that skips a block the destination does not leaves that block
//! zero there; `ram-verify` catches it (the digest is taken of the shared mapping on both
//! sides).

use guest_ram::{GuestRam, RamBlock};

use crate::capabilities::{Capabilities, Capability};
use crate::error::MigrationError;

/// Capabilities whose on/off state is carried in the configuration record and must agree
/// (QEMU 7.2's `should_validate_capability`: only this one).
const VALIDATED: [Capability; 1] = [Capability::XIgnoreShared];

/// The names the source lists in its configuration record.
pub fn configuration_capabilities(caps: &Capabilities) -> Vec<String> {
    VALIDATED
        .iter()
        .filter(|c| caps.get(**c))
        .map(|c| c.as_str().to_string())
        .collect()
}

/// Destination check of the configuration record's capabilities: every name is a validated
/// capability, and each validated capability is on here iff it is on in the stream.
pub fn check_configuration_capabilities(
    remote: &[String],
    caps: &Capabilities,
) -> Result<(), MigrationError> {
    if let Some(unknown) = remote
        .iter()
        .find(|r| !VALIDATED.iter().any(|c| c.as_str() == r.as_str()))
    {
        return Err(MigrationError::UnknownCapability(unknown.clone()));
    }
    for c in VALIDATED {
        let local = caps.get(c);
        let remote = remote.iter().any(|r| r == c.as_str());
        if local != remote {
            return Err(MigrationError::CapabilityMismatch {
                name: c.as_str().to_string(),
                local,
                remote,
            });
        }
    }
    Ok(())
}

/// Whether `block` is skipped when `ignore_shared` is on (QEMU's `ramblock_is_ignored`).
pub fn is_ignored(block: &RamBlock, ignore_shared: bool) -> bool {
    ignore_shared && block.is_shared()
}

/// Guest physical base of each block (blocks laid out one after another in list order, as
/// the software machine, the KVM machine and QEMU's `-M none` place their single block at 0).
pub fn block_bases(ram: &GuestRam) -> Vec<u64> {
    ram.blocks()
        .iter()
        .scan(0u64, |base, b| {
            let this = *base;
            *base += b.len();
            Some(this)
        })
        .collect()
}
