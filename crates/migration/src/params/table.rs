//! The parameter table: one line per QEMU 7.2 parameter, expanded by [`parameters!`] into
//! [`MigrationParameters`], [`ParameterUpdate`], their `Default`s and the [`PARAMS`] table.
//!
//! A line reads
//! `"qemu-name" field: Type = default, ParamKind, Range, HMP unit (None: not printed), "doc";`
//! and lines are in `info migrate_parameters` / `query-migrate-parameters` order.

use serde_json::Value;

use super::validate::rules;
use super::value::ParamType;
use super::{MultifdCompression, ParamKind, ParamSpec, Range};

/// Expands the table; see the module documentation for the line format.
macro_rules! parameters {
    ($(
        $name:literal $field:ident : $ty:ty = $default:expr,
        $kind:expr, $range:expr, $hmp:expr, $doc:literal;
    )*) => {
        /// The current parameter values (QEMU's `MigrationParameters`), one typed field per
        /// parameter, named like QEMU's C fields.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct MigrationParameters {
            $(
                #[doc = $doc]
                pub $field: $ty,
            )*
        }

        impl Default for MigrationParameters {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// A `migrate-set-parameters` request, parsed and type-checked: `Some` for each
        /// parameter to change (QEMU's `MigrateSetParameters`).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct ParameterUpdate {
            $(
                #[doc = $doc]
                pub $field: Option<$ty>,
            )*
        }

        impl MigrationParameters {
            /// Copies every `Some` member of `u` (no validation).
            pub(super) fn merge(&mut self, u: &ParameterUpdate) {
                $(
                    if let Some(v) = &u.$field {
                        self.$field = v.clone();
                    }
                )*
            }
        }

        /// Every parameter, in `info migrate_parameters` order.
        pub static PARAMS: &[ParamSpec] = &[
            $(
                ParamSpec {
                    name: $name,
                    kind: $kind,
                    range: $range,
                    hmp_unit: $hmp,
                    get: |p: &MigrationParameters| ParamType::to_json(&p.$field),
                    parse: |u: &mut ParameterUpdate, s: &ParamSpec, v: &Value| {
                        u.$field = Some(<$ty as ParamType>::parse(s, v)?);
                        Ok(())
                    },
                },
            )*
        ];
    };
}

use ParamKind::{Bool, Enum, Size, Str, Uint32, Uint64, Uint8};
use Range::{Any, Between, InRange, Rule};

parameters! {
    "announce-initial" announce_initial: u64 = 50,
        Size, Between(0, 100_000), Some(" ms"), "Delay before the first self-announce (ms).";
    "announce-max" announce_max: u64 = 550,
        Size, Between(0, 100_000), Some(" ms"), "Largest delay between self-announces (ms).";
    "announce-rounds" announce_rounds: u64 = 5,
        Size, Between(0, 1000), Some(""), "Number of self-announce rounds.";
    "announce-step" announce_step: u64 = 100,
        Size, Rule(rules::announce_step), Some(" ms"), "Increase of the delay between self-announces (ms).";
    "compress-level" compress_level: u8 = 1,
        Uint8, Between(0, 9), Some(""), "Compression level of the `compress` capability.";
    "compress-threads" compress_threads: u8 = 8,
        Uint8, Between(1, 255), Some(""), "Compression threads.";
    "compress-wait-thread" compress_wait_thread: bool = true,
        Bool, Any, Some(""), "Wait for a free compression thread instead of sending uncompressed.";
    "decompress-threads" decompress_threads: u8 = 2,
        Uint8, Between(1, 255), Some(""), "Decompression threads.";
    "throttle-trigger-threshold" throttle_trigger_threshold: u8 = 50,
        Uint8, InRange(1, 100), Some(""),
        "Percent of the transferred bytes the guest may dirty before auto-converge throttles.";
    "cpu-throttle-initial" cpu_throttle_initial: u8 = 20,
        Uint8, InRange(1, 99), Some(""), "First auto-converge throttle step (%).";
    "cpu-throttle-increment" cpu_throttle_increment: u8 = 10,
        Uint8, InRange(1, 99), Some(""), "Later auto-converge throttle steps (%).";
    "cpu-throttle-tailslow" cpu_throttle_tailslow: bool = false,
        Bool, Any, Some(""), "Smaller throttle steps near the goal.";
    "max-cpu-throttle" max_cpu_throttle: u8 = 99,
        Uint8, Rule(rules::max_cpu_throttle), Some(""), "Largest auto-converge throttle (%), at least cpu-throttle-initial.";
    "tls-creds" tls_creds: String = String::new(),
        Str, Any, Some(""), "Id of the TLS credentials object; empty for plain channels.";
    "tls-hostname" tls_hostname: String = String::new(),
        Str, Any, Some(""), "Host name checked against the destination's certificate.";
    "max-bandwidth" max_bandwidth: u64 = 0,
        Size, Rule(rules::max_bandwidth), Some(" bytes/second"),
        "Bandwidth limit in bytes per second; 0 is unlimited (QEMU's default is 128 MiB/s).";
    "downtime-limit" downtime_limit: u64 = 300,
        Uint64, Rule(rules::downtime_limit), Some(" ms"), "Largest acceptable downtime at switchover (ms).";
    "x-checkpoint-delay" x_checkpoint_delay: u64 = 20_000,
        Uint32, Any, Some(" ms"), "COLO checkpoint period (ms).";
    "block-incremental" block_incremental: bool = false,
        Bool, Any, Some(""), "Block migration sends only what the top images hold.";
    "multifd-channels" multifd_channels: u8 = 2,
        Uint8, Between(1, 255), Some(""), "Number of multifd channels.";
    "multifd-compression" multifd_compression: MultifdCompression = MultifdCompression::None,
        Enum(MultifdCompression::NAMES), Any, Some(""), "Compression of multifd pages.";
    "xbzrle-cache-size" xbzrle_cache_size: u64 = 64 << 20,
        Size, Rule(rules::xbzrle_cache_size), Some(" bytes"), "XBZRLE cache size in bytes (a power of two).";
    "max-postcopy-bandwidth" max_postcopy_bandwidth: u64 = 0,
        Size, Any, Some(""), "Bandwidth limit during post-copy (bytes/s); 0 is unlimited.";
    "tls-authz" tls_authz: String = String::new(),
        Str, Any, Some(""), "Id of the authorization object checking the client's identity.";
    "multifd-zlib-level" multifd_zlib_level: u8 = 1,
        Uint8, Between(0, 9), None, "zlib level of multifd compression.";
    "multifd-zstd-level" multifd_zstd_level: u8 = 1,
        Uint8, Between(0, 20), None, "zstd level of multifd compression.";
}
