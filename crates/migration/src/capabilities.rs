//! Migration capabilities (QEMU's `MigrationCapability`), in QEMU 7.2's enum order, plus
//! livemig's own `ram-verify`.
//!
//! Every QEMU 7.2 capability is listed by `query-migrate-capabilities` so management software
//! sees the familiar set; the ones livemig does not implement can be queried and switched off
//! but switching them on is refused with a clear error instead of being silently ignored.

use std::fmt;
use std::str::FromStr;

/// One migration capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// XBZRLE delta encoding of re-sent pages.
    Xbzrle,
    /// RDMA: pin all guest RAM.
    RdmaPinAll,
    /// CPU throttling when the guest dirties memory faster than it can be sent.
    AutoConverge,
    /// Block migration: send zero chunks without data.
    ZeroBlocks,
    /// Compression threads (QEMU 7.2 only).
    Compress,
    /// Emit `MIGRATION` / `MIGRATION_PASS` events.
    Events,
    /// Post-copy RAM.
    PostcopyRam,
    /// COLO fault tolerance.
    XColo,
    /// Release source RAM during post-copy.
    ReleaseRam,
    /// Block (disk) migration.
    Block,
    /// Destination-to-source return path.
    ReturnPath,
    /// Pause before switchover until `migrate-continue`.
    PauseBeforeSwitchover,
    /// Several parallel channels.
    Multifd,
    /// Migrate block dirty bitmaps.
    DirtyBitmaps,
    /// Post-copy blocktime accounting.
    PostcopyBlocktime,
    /// Activate disks late on the destination.
    LateBlockActivate,
    /// Skip shared RAM.
    XIgnoreShared,
    /// Send the VM UUID in the configuration record.
    ValidateUuid,
    /// Background snapshot.
    BackgroundSnapshot,
    /// Zero-copy send for multifd.
    ZeroCopySend,
    /// Post-copy preempt channel.
    PostcopyPreempt,
    /// livemig: digest of every RAM block checked by the destination after loading.
    RamVerify,
}

impl Capability {
    /// Every capability, in query order.
    pub const ALL: [Capability; 22] = [
        Self::Xbzrle,
        Self::RdmaPinAll,
        Self::AutoConverge,
        Self::ZeroBlocks,
        Self::Compress,
        Self::Events,
        Self::PostcopyRam,
        Self::XColo,
        Self::ReleaseRam,
        Self::Block,
        Self::ReturnPath,
        Self::PauseBeforeSwitchover,
        Self::Multifd,
        Self::DirtyBitmaps,
        Self::PostcopyBlocktime,
        Self::LateBlockActivate,
        Self::XIgnoreShared,
        Self::ValidateUuid,
        Self::BackgroundSnapshot,
        Self::ZeroCopySend,
        Self::PostcopyPreempt,
        Self::RamVerify,
    ];

    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Xbzrle => "xbzrle",
            Self::RdmaPinAll => "rdma-pin-all",
            Self::AutoConverge => "auto-converge",
            Self::ZeroBlocks => "zero-blocks",
            Self::Compress => "compress",
            Self::Events => "events",
            Self::PostcopyRam => "postcopy-ram",
            Self::XColo => "x-colo",
            Self::ReleaseRam => "release-ram",
            Self::Block => "block",
            Self::ReturnPath => "return-path",
            Self::PauseBeforeSwitchover => "pause-before-switchover",
            Self::Multifd => "multifd",
            Self::DirtyBitmaps => "dirty-bitmaps",
            Self::PostcopyBlocktime => "postcopy-blocktime",
            Self::LateBlockActivate => "late-block-activate",
            Self::XIgnoreShared => "x-ignore-shared",
            Self::ValidateUuid => "validate-uuid",
            Self::BackgroundSnapshot => "background-snapshot",
            Self::ZeroCopySend => "zero-copy-send",
            Self::PostcopyPreempt => "postcopy-preempt",
            Self::RamVerify => "ram-verify",
        }
    }

    /// Whether livemig implements this capability (others can only be off).
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Self::Events
                | Self::RamVerify
                | Self::Xbzrle
                | Self::ReturnPath
                | Self::AutoConverge
                | Self::Multifd
                | Self::Block
                | Self::ZeroBlocks
        )
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of capability handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The name is not a capability.
    #[error("Parameter 'capability' does not accept value '{0}'")]
    Unknown(String),
    /// livemig does not implement it.
    #[error("Capability '{0}' is not supported by livemig")]
    Unsupported(Capability),
    /// A migration is running.
    #[error("There's a migration process in progress")]
    MigrationRunning,
}

impl FromStr for Capability {
    type Err = CapabilityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| CapabilityError::Unknown(s.to_string()))
    }
}

/// The set of enabled capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    enabled: std::collections::BTreeSet<Capability>,
}

impl Capabilities {
    /// True when `cap` is on.
    pub fn get(&self, cap: Capability) -> bool {
        self.enabled.contains(&cap)
    }

    /// Applies a batch of changes as a whole: either all are valid and applied, or none is.
    pub fn apply(&mut self, changes: &[(Capability, bool)]) -> Result<(), CapabilityError> {
        if let Some((cap, _)) = changes.iter().find(|(c, on)| *on && !c.is_supported()) {
            return Err(CapabilityError::Unsupported(*cap));
        }
        for &(cap, on) in changes {
            if on {
                self.enabled.insert(cap);
            } else {
                self.enabled.remove(&cap);
            }
        }
        Ok(())
    }

    /// Every capability with its state, in query order.
    pub fn list(&self) -> Vec<(Capability, bool)> {
        Capability::ALL.iter().map(|&c| (c, self.get(c))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown() {
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>(), Ok(c));
        }
        assert_eq!(
            "nosuch".parse::<Capability>(),
            Err(CapabilityError::Unknown("nosuch".into()))
        );
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let mut caps = Capabilities::default();
        let err = caps.apply(&[(Capability::Events, true), (Capability::PostcopyRam, true)]);
        assert_eq!(
            err,
            Err(CapabilityError::Unsupported(Capability::PostcopyRam))
        );
        assert!(!caps.get(Capability::Events));
        caps.apply(&[(Capability::Events, true), (Capability::PostcopyRam, false)])
            .unwrap();
        assert!(caps.get(Capability::Events));
        assert_eq!(caps.list().len(), 22);
    }
}
