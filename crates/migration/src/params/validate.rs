//! The checks of QEMU 7.2's `migrate_params_check`, run on the merged set.
//!
//! Plain ranges come from the table ([`Range::Between`], [`Range::InRange`]); the rest are the
//! functions in [`rules`], referenced from the table. Rule errors name the parameter with
//! underscores, as QEMU does:
//!
//! | parameter | valid | text after `Parameter '<name>' expects` |
//! | --- | --- | --- |
//! | `announce_step` | 1..=10000 | `a value between 0 and 10000` (sic) |
//! | `max_cpu_throttle` | cpu-throttle-initial..=99 | `an integer in the range of cpu_throttle_initial to 99` |
//! | `max_bandwidth` | ≤ SIZE_MAX | `an integer in the range of 0 to (18446744073709551615UL) bytes/second` |
//! | `downtime_limit` | ≤ 2 000 000 | `an integer in the range of 0 to (2000 * 1000) ms` |
//! | `xbzrle_cache_size` | power of two ≥ 4096 | `a power of two no less than the target page size` |
//! | `cache size` | ≤ guest RAM ([`ParamLimits::ram_size`]) | `exceeds guest ram size` |
//!
//! The last rule is not in QEMU 7.2, which lets the cache be larger than the guest (it was
//! dropped after QEMU 2.11; the text is the one QEMU used then). livemig allocates the cache
//! when a migration starts, so an absurd size would fail there, far from the command.
//! With capability `zero-copy-send` on, multifd compression and TLS are refused with
//! `Zero copy only available for non-compressed non-TLS multifd migration`.

use super::{MigrationParameters, MultifdCompression, ParamError, ParamLimits, Range, PARAMS};

/// The target page size (x86).
const TARGET_PAGE_SIZE: u64 = 4096;

fn invalid(name: &str, what: impl Into<String>) -> ParamError {
    ParamError::Invalid {
        name: name.to_string(),
        what: what.into(),
    }
}

impl MigrationParameters {
    /// Checks every rule; the first broken one (in table order) is the error.
    pub(super) fn check(&self, limits: &ParamLimits) -> Result<(), ParamError> {
        for s in PARAMS {
            let (min, max, what) = match s.range {
                Range::Any => continue,
                Range::Rule(rule) => {
                    rule(self, limits)?;
                    continue;
                }
                Range::Between(a, b) => (a, b, format!("a value between {a} and {b}")),
                Range::InRange(a, b) => (a, b, format!("an integer in the range of {a} to {b}")),
            };
            let n = s.value(self).as_u64().unwrap_or(0);
            if n < min || n > max {
                return Err(invalid(&s.name.replace('-', "_"), what));
            }
        }
        rules::zero_copy(self, limits)
    }
}

/// The rules the table refers to with [`Range::Rule`].
pub(super) mod rules {
    use super::*;

    /// Largest `downtime-limit` QEMU accepts, in ms.
    pub const MAX_DOWNTIME_LIMIT_MS: u64 = 2000 * 1000;

    /// `announce-step`: 1..=10000, with QEMU's text that says 0.
    pub fn announce_step(p: &MigrationParameters, _: &ParamLimits) -> Result<(), ParamError> {
        if !(1..=10_000).contains(&p.announce_step) {
            return Err(invalid("announce_step", "a value between 0 and 10000"));
        }
        Ok(())
    }

    /// `max-cpu-throttle`: from `cpu-throttle-initial` to 99.
    pub fn max_cpu_throttle(p: &MigrationParameters, _: &ParamLimits) -> Result<(), ParamError> {
        if p.max_cpu_throttle < p.cpu_throttle_initial || p.max_cpu_throttle > 99 {
            return Err(invalid(
                "max_cpu_throttle",
                "an integer in the range of cpu_throttle_initial to 99",
            ));
        }
        Ok(())
    }

    /// The text of QEMU's `max-bandwidth` check, with `SIZE_MAX` spelled as glibc does.
    pub fn max_bandwidth_text() -> String {
        format!(
            "an integer in the range of 0 to ({}UL) bytes/second",
            usize::MAX
        )
    }

    /// `max-bandwidth`: at most `SIZE_MAX` (never broken on 64-bit hosts).
    pub fn max_bandwidth(p: &MigrationParameters, _: &ParamLimits) -> Result<(), ParamError> {
        if usize::try_from(p.max_bandwidth).is_err() {
            return Err(invalid("max_bandwidth", max_bandwidth_text()));
        }
        Ok(())
    }

    /// `downtime-limit`: at most 2000 s.
    pub fn downtime_limit(p: &MigrationParameters, _: &ParamLimits) -> Result<(), ParamError> {
        if p.downtime_limit > MAX_DOWNTIME_LIMIT_MS {
            return Err(invalid(
                "downtime_limit",
                "an integer in the range of 0 to (2000 * 1000) ms",
            ));
        }
        Ok(())
    }

    /// `xbzrle-cache-size`: a power of two, at least a page, at most the guest RAM.
    pub fn xbzrle_cache_size(p: &MigrationParameters, l: &ParamLimits) -> Result<(), ParamError> {
        let n = p.xbzrle_cache_size;
        if n < TARGET_PAGE_SIZE || !n.is_power_of_two() {
            return Err(invalid(
                "xbzrle_cache_size",
                "a power of two no less than the target page size",
            ));
        }
        if l.ram_size.is_some_and(|ram| n > ram) {
            return Err(invalid("cache size", "exceeds guest ram size"));
        }
        Ok(())
    }

    /// With `zero-copy-send`: no multifd compression and no TLS.
    pub fn zero_copy(p: &MigrationParameters, l: &ParamLimits) -> Result<(), ParamError> {
        if l.zero_copy_send && (p.multifd_compression != MultifdCompression::None || p.uses_tls()) {
            return Err(ParamError::ZeroCopy);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ParameterUpdate;
    use super::*;
    use serde_json::{json, Value};

    fn apply_with(p: &mut MigrationParameters, v: Value, l: &ParamLimits) -> Result<(), String> {
        let u = ParameterUpdate::from_json(v.as_object().unwrap()).map_err(|e| e.to_string())?;
        p.apply(&u, l).map_err(|e| e.to_string())
    }

    fn apply(v: Value) -> Result<(), String> {
        apply_with(
            &mut MigrationParameters::default(),
            v,
            &ParamLimits::default(),
        )
    }

    #[test]
    fn table_ranges_with_qemu_texts() {
        let cases = [
            (
                "compress-level",
                10,
                "compress_level",
                "a value between 0 and 9",
            ),
            (
                "compress-threads",
                0,
                "compress_threads",
                "a value between 1 and 255",
            ),
            (
                "decompress-threads",
                0,
                "decompress_threads",
                "a value between 1 and 255",
            ),
            (
                "throttle-trigger-threshold",
                101,
                "throttle_trigger_threshold",
                "an integer in the range of 1 to 100",
            ),
            (
                "cpu-throttle-initial",
                0,
                "cpu_throttle_initial",
                "an integer in the range of 1 to 99",
            ),
            (
                "cpu-throttle-increment",
                100,
                "cpu_throttle_increment",
                "an integer in the range of 1 to 99",
            ),
            (
                "multifd-channels",
                0,
                "multifd_channels",
                "a value between 1 and 255",
            ),
            (
                "multifd-zlib-level",
                10,
                "multifd_zlib_level",
                "a value between 0 and 9",
            ),
            (
                "multifd-zstd-level",
                21,
                "multifd_zstd_level",
                "a value between 0 and 20",
            ),
            (
                "announce-initial",
                100_001,
                "announce_initial",
                "a value between 0 and 100000",
            ),
            (
                "announce-max",
                100_001,
                "announce_max",
                "a value between 0 and 100000",
            ),
            (
                "announce-rounds",
                1001,
                "announce_rounds",
                "a value between 0 and 1000",
            ),
            (
                "announce-step",
                0,
                "announce_step",
                "a value between 0 and 10000",
            ),
            (
                "announce-step",
                10_001,
                "announce_step",
                "a value between 0 and 10000",
            ),
        ];
        for (name, v, c_name, what) in cases {
            let mut m = serde_json::Map::new();
            m.insert(name.into(), json!(v));
            assert_eq!(
                apply(Value::Object(m)),
                Err(format!("Parameter '{c_name}' expects {what}")),
                "{name} = {v}"
            );
        }
        apply(json!({"compress-level": 9, "announce-step": 1, "multifd-zstd-level": 20})).unwrap();
    }

    #[test]
    fn downtime_limit_rule() {
        assert_eq!(
            apply(json!({"downtime-limit": 2_000_001})),
            Err("Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
                .into())
        );
        apply(json!({"downtime-limit": 2_000_000})).unwrap();
    }

    #[test]
    fn max_cpu_throttle_is_checked_against_the_merged_initial() {
        let text = "Parameter 'max_cpu_throttle' expects an integer in the range of \
                    cpu_throttle_initial to 99";
        assert_eq!(apply(json!({"max-cpu-throttle": 10})), Err(text.into()));
        let mut p = MigrationParameters::default();
        let l = ParamLimits::default();
        // Raising the initial step above the stored maximum breaks the merged set too.
        assert_eq!(
            apply_with(
                &mut p,
                json!({"cpu-throttle-initial": 99, "max-cpu-throttle": 50}),
                &l
            ),
            Err(text.into())
        );
        apply_with(
            &mut p,
            json!({"cpu-throttle-initial": 30, "max-cpu-throttle": 30}),
            &l,
        )
        .unwrap();
        assert_eq!((p.cpu_throttle_initial, p.max_cpu_throttle), (30, 30));
        assert_eq!(apply(json!({"max-cpu-throttle": 100})), Err(text.into()));
    }

    #[test]
    fn max_bandwidth_rule() {
        assert_eq!(
            rules::max_bandwidth_text(),
            "an integer in the range of 0 to (18446744073709551615UL) bytes/second"
        );
        // SIZE_MAX is u64::MAX on 64-bit hosts: every uint64 is accepted, as QEMU does.
        apply(json!({"max-bandwidth": u64::MAX})).unwrap();
    }

    #[test]
    fn xbzrle_cache_size_rules() {
        let pow2 = "Parameter 'xbzrle_cache_size' expects a power of two no less than the \
                    target page size";
        assert_eq!(apply(json!({"xbzrle-cache-size": 5000})), Err(pow2.into()));
        assert_eq!(apply(json!({"xbzrle-cache-size": 2048})), Err(pow2.into()));
        let gib = ParamLimits {
            ram_size: Some(1 << 30),
            ..Default::default()
        };
        let mut p = MigrationParameters::default();
        assert_eq!(
            apply_with(&mut p, json!({"xbzrle-cache-size": 1u64 << 36}), &gib),
            Err("Parameter 'cache size' expects exceeds guest ram size".into())
        );
        apply_with(&mut p, json!({"xbzrle-cache-size": 1u64 << 30}), &gib).unwrap();
        // A guest smaller than the default cache can still change other parameters.
        let small = ParamLimits {
            ram_size: Some(32 << 20),
            ..Default::default()
        };
        let mut p = MigrationParameters::default();
        apply_with(&mut p, json!({"max-bandwidth": 1}), &small).unwrap();
        // Without a VM to compare with, only the power-of-two rule applies.
        apply(json!({"xbzrle-cache-size": 1u64 << 36})).unwrap();
    }

    #[test]
    fn zero_copy_refuses_compression_and_tls() {
        let zc = ParamLimits {
            zero_copy_send: true,
            ..Default::default()
        };
        let text = "Zero copy only available for non-compressed non-TLS multifd migration";
        let mut p = MigrationParameters::default();
        assert_eq!(
            apply_with(&mut p, json!({"multifd-compression": "zlib"}), &zc),
            Err(text.into())
        );
        assert_eq!(
            apply_with(&mut p, json!({"tls-creds": "tls0"}), &zc),
            Err(text.into())
        );
        apply_with(&mut p, json!({"tls-creds": null, "max-bandwidth": 1}), &zc).unwrap();
        apply_with(
            &mut p,
            json!({"multifd-compression": "zlib"}),
            &ParamLimits::default(),
        )
        .unwrap();
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let mut p = MigrationParameters::default();
        let l = ParamLimits::default();
        let e = apply_with(
            &mut p,
            json!({"max-bandwidth": 1000, "downtime-limit": 3_000_000}),
            &l,
        );
        assert!(e.is_err());
        assert_eq!(p, MigrationParameters::default());
        apply_with(&mut p, json!({"max-bandwidth": 1000, "tls-creds": "x"}), &l).unwrap();
        assert_eq!(p.max_bandwidth, 1000);
        assert_eq!(p.tls_creds, "x");
        assert!(p.uses_tls());
    }
}
