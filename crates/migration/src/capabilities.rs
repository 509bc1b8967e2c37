//! Migration capabilities (QEMU's `MigrationCapability`), in QEMU 7.2's enum order, plus
//! livemig's own `x-local-handover` and `ram-verify`.
//!
//! Every QEMU 7.2 capability name is known (so a manager copying QEMU's list can switch any of
//! them *off*), but `query-migrate-capabilities` lists exactly the ones livemig implements:
//! management software such as libvirt switches on whatever is listed (`pause-before-switchover`,
//! `late-block-activate`, ...), so a listed capability must work. The `supported` flag of the
//! one `TABLE` row per capability decides both; switching an unlisted one on is refused with a
//! clear error instead of being silently ignored.
//!
//! [`Capabilities`] is a bitset over [`Capability`]. [`Capabilities::apply`] checks the merged
//! set with the rules of QEMU 7.2's `migrate_caps_check` first, then livemig's own refusal:
//!
//! | enabled | requires / refuses | error |
//! | --- | --- | --- |
//! | `postcopy-ram` | not `x-ignore-shared` | `Postcopy is not compatible with ignore-shared` |
//! | `background-snapshot` | none of 15 capabilities (QEMU's list, in its order) | `Background-snapshot is not compatible with <cap>` |
//! | `zero-copy-send` | `multifd`, not `compress`, not `xbzrle`, `multifd-compression` none, no `tls-creds` | `Zero copy only available for non-compressed non-TLS multifd migration` |
//! | `postcopy-preempt` | `postcopy-ram` | `Postcopy preempt requires postcopy-ram` |
//! | `postcopy-preempt` | not `compress` | `Postcopy preempt not compatible with compress` |
//! | `multifd` | not `compress` | `Multifd is not compatible with compress` |
//!
//! QEMU's checks of the host (userfaultfd for postcopy and background snapshots, replication
//! for COLO) and of the incoming URI are not rules over the set and are left to the code that
//! would implement those features.

use std::fmt;
use std::str::FromStr;

use crate::params::{MigrationParameters, MultifdCompression, ParamLimits};

/// One migration capability; the discriminant is QEMU's enum value (and the bit in
/// [`Capabilities`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
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
    /// livemig: over a `unix:` channel, memfd RAM is handed to the destination as
    /// descriptors instead of copied (with `x-ignore-shared`; see `ram::handover`).
    XLocalHandover,
    /// livemig: digest of every RAM block checked by the destination after loading.
    RamVerify,
}

/// One row of [`TABLE`]: the capability, its QAPI name, and whether livemig implements it.
struct Row {
    cap: Capability,
    name: &'static str,
    /// Listed by `query-migrate-capabilities` and accepted on by `migrate-set-capabilities`.
    /// A branch that implements a capability flips this flag and nothing else here.
    supported: bool,
}

const fn row(cap: Capability, name: &'static str, supported: bool) -> Row {
    Row {
        cap,
        name,
        supported,
    }
}

/// Every capability in QEMU 7.2's enum order (the discriminant indexes this table), then
/// livemig's own. The single place that says what livemig implements.
const TABLE: [Row; 23] = [
    row(Capability::Xbzrle, "xbzrle", true),
    row(Capability::RdmaPinAll, "rdma-pin-all", false),
    row(Capability::AutoConverge, "auto-converge", true),
    row(Capability::ZeroBlocks, "zero-blocks", true),
    row(Capability::Compress, "compress", false),
    row(Capability::Events, "events", true),
    row(Capability::PostcopyRam, "postcopy-ram", true),
    row(Capability::XColo, "x-colo", false),
    // Belongs with postcopy-ram.
    row(Capability::ReleaseRam, "release-ram", false),
    row(Capability::Block, "block", true),
    row(Capability::ReturnPath, "return-path", true),
    row(
        Capability::PauseBeforeSwitchover,
        "pause-before-switchover",
        true,
    ),
    row(Capability::Multifd, "multifd", true),
    row(Capability::DirtyBitmaps, "dirty-bitmaps", false),
    row(Capability::PostcopyBlocktime, "postcopy-blocktime", false),
    row(Capability::LateBlockActivate, "late-block-activate", true),
    row(Capability::XIgnoreShared, "x-ignore-shared", true),
    row(Capability::ValidateUuid, "validate-uuid", true),
    row(Capability::BackgroundSnapshot, "background-snapshot", false),
    row(Capability::ZeroCopySend, "zero-copy-send", true),
    row(Capability::PostcopyPreempt, "postcopy-preempt", false),
    // livemig's extensions; ram-verify listed last: QEMU rejects the names (see the README on copying
    // capability lists between QEMU and livemig).
    row(Capability::XLocalHandover, "x-local-handover", true),
    row(Capability::RamVerify, "ram-verify", true),
];

impl Capability {
    /// Every capability, in QEMU's enum order (supported or not).
    pub const ALL: [Capability; 23] = {
        let mut all = [Capability::Xbzrle; 23];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].cap;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        self.row().name
    }

    /// Whether livemig implements this capability: only these are listed, and the others can
    /// only be switched off.
    pub fn is_supported(self) -> bool {
        self.row().supported
    }

    /// The capabilities livemig implements, in query order.
    pub fn supported() -> impl Iterator<Item = Capability> {
        Self::ALL.into_iter().filter(|c| c.is_supported())
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
    /// `postcopy-ram` with `x-ignore-shared`.
    #[error("Postcopy is not compatible with ignore-shared")]
    PostcopyIgnoreShared,
    /// `background-snapshot` with one of the capabilities it excludes.
    #[error("Background-snapshot is not compatible with {0}")]
    BackgroundSnapshot(Capability),
    /// `zero-copy-send` without plain multifd.
    #[error("Zero copy only available for non-compressed non-TLS multifd migration")]
    ZeroCopy,
    /// `postcopy-preempt` without `postcopy-ram`.
    #[error("Postcopy preempt requires postcopy-ram")]
    PreemptNeedsPostcopy,
    /// `postcopy-preempt` with `compress`.
    #[error("Postcopy preempt not compatible with compress")]
    PreemptCompress,
    /// `multifd` with `compress`.
    #[error("Multifd is not compatible with compress")]
    MultifdCompress,
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

/// What `background-snapshot` cannot be combined with, in QEMU 7.2's order.
const BACKGROUND_SNAPSHOT_EXCLUDES: [Capability; 15] = [
    Capability::PostcopyRam,
    Capability::DirtyBitmaps,
    Capability::PostcopyBlocktime,
    Capability::LateBlockActivate,
    Capability::ReturnPath,
    Capability::Multifd,
    Capability::PauseBeforeSwitchover,
    Capability::AutoConverge,
    Capability::ReleaseRam,
    Capability::RdmaPinAll,
    Capability::Compress,
    Capability::Xbzrle,
    Capability::XColo,
    Capability::ValidateUuid,
    Capability::ZeroCopySend,
];

/// The set of enabled capabilities (a bitset; all off by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Capabilities {
    bits: u32,
}

/// livemig's defaults: QEMU's (all off) but `return-path`, so that `completed` means the
/// destination has the guest and a destination that fails to load lets the source resume.
/// QEMU 7.2 destinations answer the return-path request whatever their own setting; switching
/// it off gives QEMU's behaviour. Transports without a reverse direction (`exec:`, `file:`)
/// run without it.
impl Default for Capabilities {
    fn default() -> Self {
        let mut caps = Self { bits: 0 };
        caps.set(Capability::ReturnPath, true);
        caps
    }
}

impl Capabilities {
    fn bit(cap: Capability) -> u32 {
        1 << cap as u8
    }

    /// True when `cap` is on.
    pub fn get(&self, cap: Capability) -> bool {
        self.bits & Self::bit(cap) != 0
    }

    /// Turns `cap` on or off without any check (building a set; use [`Self::apply`] for
    /// requests).
    pub fn set(&mut self, cap: Capability, on: bool) {
        if on {
            self.bits |= Self::bit(cap);
        } else {
            self.bits &= !Self::bit(cap);
        }
    }

    /// Applies a batch of changes as a whole: the merged set is checked with QEMU's rules
    /// (against the current `params`), then for capabilities livemig does not implement;
    /// either all changes are applied or none.
    pub fn apply(
        &mut self,
        changes: &[(Capability, bool)],
        params: &MigrationParameters,
    ) -> Result<(), CapabilityError> {
        let mut next = self.clone();
        for &(cap, on) in changes {
            next.set(cap, on);
        }
        next.check(params)?;
        if let Some((cap, _)) = changes.iter().find(|(c, on)| *on && !c.is_supported()) {
            return Err(CapabilityError::Unsupported(*cap));
        }
        *self = next;
        Ok(())
    }

    /// QEMU 7.2's `migrate_caps_check` rules over the set (see the module documentation).
    pub fn check(&self, params: &MigrationParameters) -> Result<(), CapabilityError> {
        use Capability as C;
        let on = |c| self.get(c);
        if on(C::PostcopyRam) && on(C::XIgnoreShared) {
            return Err(CapabilityError::PostcopyIgnoreShared);
        }
        if on(C::BackgroundSnapshot) {
            if let Some(&c) = BACKGROUND_SNAPSHOT_EXCLUDES.iter().find(|&&c| on(c)) {
                return Err(CapabilityError::BackgroundSnapshot(c));
            }
        }
        if on(C::ZeroCopySend)
            && (!on(C::Multifd)
                || on(C::Compress)
                || on(C::Xbzrle)
                || params.multifd_compression != MultifdCompression::None
                || params.uses_tls())
        {
            return Err(CapabilityError::ZeroCopy);
        }
        if on(C::PostcopyPreempt) {
            if !on(C::PostcopyRam) {
                return Err(CapabilityError::PreemptNeedsPostcopy);
            }
            if on(C::Compress) {
                return Err(CapabilityError::PreemptCompress);
            }
        }
        if on(C::Multifd) && on(C::Compress) {
            return Err(CapabilityError::MultifdCompress);
        }
        Ok(())
    }

    /// What this set imposes on parameter changes, with the guest's RAM size if known.
    pub fn param_limits(&self, ram_size: Option<u64>) -> ParamLimits {
        ParamLimits {
            ram_size,
            zero_copy_send: self.get(Capability::ZeroCopySend),
        }
    }

    /// Every supported capability with its state, in query order (what
    /// `query-migrate-capabilities` lists: exactly what can be switched on).
    pub fn list(&self) -> Vec<(Capability, bool)> {
        Capability::supported().map(|c| (c, self.get(c))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability as C;

    fn set(caps: &[Capability]) -> Capabilities {
        let mut s = Capabilities::default();
        s.set(Capability::ReturnPath, false);
        for &c in caps {
            s.set(c, true);
        }
        s
    }

    fn check(caps: &[Capability]) -> Result<(), String> {
        set(caps)
            .check(&MigrationParameters::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_round_trip_and_unknown() {
        for (i, c) in Capability::ALL.into_iter().enumerate() {
            assert_eq!(c.as_str().parse::<Capability>(), Ok(c));
            assert_eq!(c as usize, i, "{c} keeps QEMU's enum value");
            assert_eq!(TABLE[i].cap, c, "the table row of {c} is at its enum value");
        }
        assert_eq!(
            Capability::ALL.last(),
            Some(&C::RamVerify),
            "the extension comes last"
        );
        assert_eq!(
            "nosuch".parse::<Capability>(),
            Err(CapabilityError::Unknown("nosuch".into()))
        );
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let p = MigrationParameters::default();
        let mut caps = set(&[]);
        let err = caps.apply(&[(C::Events, true), (C::Compress, true)], &p);
        assert_eq!(err, Err(CapabilityError::Unsupported(C::Compress)));
        assert!(!caps.get(C::Events));
        caps.apply(&[(C::Events, true), (C::Compress, false)], &p)
            .unwrap();
        assert!(caps.get(C::Events));
        assert_eq!(caps.list().len(), Capability::supported().count());
        assert!(caps.list().iter().all(|(c, _)| c.is_supported()));
        caps.apply(&[(C::Events, false), (C::Multifd, true)], &p)
            .unwrap();
        assert_eq!(set(&[C::Multifd]), caps);
    }

    #[test]
    fn qemu_rules_come_before_the_unsupported_refusal() {
        let mut caps = Capabilities::default();
        let e = caps.apply(
            &[(C::PostcopyPreempt, true)],
            &MigrationParameters::default(),
        );
        assert_eq!(e, Err(CapabilityError::PreemptNeedsPostcopy));
        assert_eq!(caps, Capabilities::default());
    }

    #[test]
    fn postcopy_rules() {
        assert_eq!(
            check(&[C::PostcopyRam, C::XIgnoreShared]),
            Err("Postcopy is not compatible with ignore-shared".into())
        );
        assert_eq!(
            check(&[C::PostcopyPreempt]),
            Err("Postcopy preempt requires postcopy-ram".into())
        );
        assert_eq!(
            check(&[C::PostcopyPreempt, C::PostcopyRam, C::Compress]),
            Err("Postcopy preempt not compatible with compress".into())
        );
        check(&[C::PostcopyPreempt, C::PostcopyRam, C::XIgnoreShared]).unwrap_err();
        check(&[C::PostcopyPreempt, C::PostcopyRam]).unwrap();
    }

    #[test]
    fn multifd_and_compress_exclude_each_other() {
        assert_eq!(
            check(&[C::Multifd, C::Compress]),
            Err("Multifd is not compatible with compress".into())
        );
        check(&[C::Multifd, C::Xbzrle]).unwrap();
    }

    #[test]
    fn background_snapshot_excludes_in_qemu_order() {
        for c in BACKGROUND_SNAPSHOT_EXCLUDES {
            assert_eq!(
                check(&[C::BackgroundSnapshot, c]),
                Err(format!("Background-snapshot is not compatible with {c}"))
            );
        }
        assert_eq!(
            check(&[C::BackgroundSnapshot, C::Xbzrle, C::PostcopyRam]),
            Err("Background-snapshot is not compatible with postcopy-ram".into())
        );
        check(&[C::BackgroundSnapshot, C::Events, C::Block]).unwrap();
    }

    #[test]
    fn zero_copy_send_needs_plain_multifd() {
        let text = "Zero copy only available for non-compressed non-TLS multifd migration";
        assert_eq!(check(&[C::ZeroCopySend]), Err(text.into()));
        assert_eq!(
            check(&[C::ZeroCopySend, C::Multifd, C::Xbzrle]),
            Err(text.into())
        );
        check(&[C::ZeroCopySend, C::Multifd]).unwrap();
        let caps = set(&[C::ZeroCopySend, C::Multifd]);
        let p = MigrationParameters {
            multifd_compression: MultifdCompression::Zstd,
            ..Default::default()
        };
        assert_eq!(caps.check(&p), Err(CapabilityError::ZeroCopy));
        let p = MigrationParameters {
            tls_creds: "tls0".into(),
            ..Default::default()
        };
        assert_eq!(caps.check(&p), Err(CapabilityError::ZeroCopy));
    }
}
