//! The link presets of `livemig bench --link`, parsed once from the command line, and what
//! such a link can carry at best.
//!
//! Presets: `RATE[,rtt=DURATION][,mtu=BYTES]`, RATE `100mbit`, `1gbit`, `10gbit` (any
//! `<n>mbit` or `<n>gbit`), DURATION `<n>ms` or `<n>us`, BYTES 576..=65535 (the veth's MTU on
//! both ends; 1500 when absent). Migration networks commonly use jumbo frames (`mtu=9000`).
//!
//! `tbf` counts whole frames against the rate, so the headers of every TCP segment take a
//! share of the link (with the timestamps option Linux uses by default):
//!
//! ```text
//!  | Ethernet 14 | IPv4 20 | TCP 20 + timestamps 12 | payload MTU − 52 |
//!  payload share = (MTU − 52) ÷ (MTU + 14):  MTU 1500 → 95.6 %   MTU 9000 → 99.3 %
//! ```
//!
//! so no TCP sender moves `bytes` in less than `bytes ÷ rate ÷ share` ([`LinkSpec::floor`]),
//! less the burst the bucket lets through at once (10 ms of the link, see
//! [`crate::netns::Testbed::set_rate`]): 0.25 % of 512 MiB at 1 Gbit/s.

use std::time::Duration;

/// The veth's MTU when the preset does not set one (Linux's default for Ethernet).
pub const DEFAULT_MTU: u32 = 1500;
/// The smallest MTU accepted (IPv4's minimum reassembly size; below it TCP barely moves).
const MIN_MTU: u32 = 576;
/// The largest MTU a veth takes.
const MAX_MTU: u32 = 65535;
/// Ethernet header bytes per frame that `tbf` counts (no preamble, no FCS on a veth).
const ETHERNET_HEADER: u32 = 14;
/// IPv4 and TCP headers per segment, the TCP timestamps option included.
const IP_TCP_HEADERS: u32 = 20 + 20 + 12;

/// A link preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// Rate in bits per second, each direction.
    pub bits_per_sec: u64,
    /// Round-trip time added by the relay (None: the veth's own, microseconds).
    pub rtt: Option<Duration>,
    /// The veth's MTU on both ends (None: the default, [`DEFAULT_MTU`]).
    pub mtu: Option<u32>,
}

impl LinkSpec {
    /// The MTU in effect.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    /// The share of the link's bits that is TCP payload with full-sized segments.
    pub fn payload_share(&self) -> f64 {
        let mtu = self.mtu();
        f64::from(mtu - IP_TCP_HEADERS) / f64::from(mtu + ETHERNET_HEADER)
    }

    /// The shortest time in which one TCP connection (or several) can move `bytes`: the
    /// frames' headers counted, nothing else.
    pub fn floor(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(
            bytes as f64 * 8.0 / self.bits_per_sec as f64 / self.payload_share(),
        )
    }
}

fn parse_rate(rate: &str) -> Result<u64, String> {
    let rate = rate.trim().to_ascii_lowercase();
    let (digits, unit) = if let Some(d) = rate.strip_suffix("gbit") {
        (d, 1_000_000_000u64)
    } else if let Some(d) = rate.strip_suffix("mbit") {
        (d, 1_000_000u64)
    } else {
        return Err(format!(
            "link rate '{rate}' must be <n>mbit or <n>gbit (e.g. 1gbit, 100mbit)"
        ));
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("link rate '{rate}': '{digits}' is not a whole number"))?;
    n.checked_mul(unit)
        .filter(|&b| b > 0 && b <= 100_000_000_000)
        .ok_or_else(|| format!("link rate '{rate}' must be above 0 and at most 100gbit"))
}

fn parse_rtt(v: &str) -> Result<Duration, String> {
    let (digits, micros) = if let Some(d) = v.strip_suffix("ms") {
        (d, 1000)
    } else if let Some(d) = v.strip_suffix("us") {
        (d, 1)
    } else {
        return Err(format!("rtt '{v}' must be <n>ms or <n>us"));
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("rtt '{v}': '{digits}' is not a whole number"))?;
    if n == 0 || n.checked_mul(micros).is_none_or(|us| us > 10_000_000) {
        return Err(format!("rtt '{v}' must be above 0 and at most 10 s"));
    }
    Ok(Duration::from_micros(n * micros))
}

fn parse_mtu(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
        .ok_or_else(|| format!("mtu '{v}' must be a whole number from {MIN_MTU} to {MAX_MTU}"))
}

impl std::str::FromStr for LinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<LinkSpec, String> {
        let mut parts = s.split(',');
        let bits_per_sec = parse_rate(parts.next().unwrap_or_default())?;
        let (mut rtt, mut mtu) = (None, None);
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("rtt=") {
                rtt = Some(parse_rtt(v)?);
            } else if let Some(v) = p.strip_prefix("mtu=") {
                mtu = Some(parse_mtu(v)?);
            } else {
                return Err(format!(
                    "unknown link option '{p}' (expected rtt=<n>ms or mtu=<bytes>)"
                ));
            }
        }
        Ok(LinkSpec {
            bits_per_sec,
            rtt,
            mtu,
        })
    }
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} Mbit/s", self.bits_per_sec / 1_000_000)?;
        if let Some(rtt) = self.rtt {
            write!(f, ", rtt {} ms", rtt.as_secs_f64() * 1000.0)?;
        }
        write!(f, ", MTU {}", self.mtu())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_hostile_ones_are_refused() {
        let l: LinkSpec = "1gbit".parse().unwrap();
        assert_eq!(
            l,
            LinkSpec {
                bits_per_sec: 1_000_000_000,
                rtt: None,
                mtu: None,
            }
        );
        assert_eq!(l.mtu(), DEFAULT_MTU);
        let l: LinkSpec = "100mbit,rtt=20ms".parse().unwrap();
        assert_eq!(l.bits_per_sec, 100_000_000);
        assert_eq!(l.rtt, Some(Duration::from_millis(20)));
        assert_eq!(
            "10GBIT".parse::<LinkSpec>().unwrap().bits_per_sec,
            10_000_000_000
        );
        assert_eq!(
            "1gbit,rtt=500us".parse::<LinkSpec>().unwrap().rtt,
            Some(Duration::from_micros(500))
        );
        let l: LinkSpec = "1gbit,mtu=9000".parse().unwrap();
        assert_eq!((l.mtu, l.rtt), (Some(9000), None));
        let l: LinkSpec = "1gbit, mtu=576,rtt=1ms".parse().unwrap();
        assert_eq!((l.mtu(), l.rtt), (576, Some(Duration::from_millis(1))));
        assert_eq!("1gbit,mtu=65535".parse::<LinkSpec>().unwrap().mtu(), 65535);
        for bad in [
            "",
            "1",
            "gbit",
            "0gbit",
            "-1gbit",
            "1.5gbit",
            "99999999999999999999gbit",
            "18446744073gbit",
            "101gbit",
            "1gbit,rtt=",
            "1gbit,rtt=0ms",
            "1gbit,rtt=20",
            "1gbit,rtt=18446744073709551615ms",
            "1gbit,loss=1%",
            "1gbit,mtu=",
            "1gbit,mtu=575",
            "1gbit,mtu=0",
            "1gbit,mtu=-1500",
            "1gbit,mtu=65536",
            "1gbit,mtu=4294967296",
            "1gbit,mtu=9000.5",
            "1gbit,mtu=0x2328",
            "1gbit,mtu=9000bytes",
            "1gbit,mtu",
        ] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn presets_display_rate_rtt_and_mtu() {
        let l: LinkSpec = "100mbit,rtt=20ms".parse().unwrap();
        assert_eq!(l.to_string(), "100 Mbit/s, rtt 20 ms, MTU 1500");
        let l: LinkSpec = "1gbit,mtu=9000".parse().unwrap();
        assert_eq!(l.to_string(), "1000 Mbit/s, MTU 9000");
    }

    #[test]
    fn the_floor_counts_every_frames_headers() {
        let l: LinkSpec = "1gbit".parse().unwrap();
        // 1448 bytes of payload per 1514-byte frame.
        assert!((l.payload_share() - 1448.0 / 1514.0).abs() < 1e-12);
        // 1 GB at 1 Gbit/s: 8 s of bits, 8.365 s with the headers.
        let floor = l.floor(1_000_000_000).as_secs_f64();
        assert!((floor - 8.0 * 1514.0 / 1448.0).abs() < 1e-6, "{floor}");
        let jumbo: LinkSpec = "1gbit,mtu=9000".parse().unwrap();
        assert!((jumbo.payload_share() - 8948.0 / 9014.0).abs() < 1e-12);
        assert!(jumbo.floor(1 << 30) < l.floor(1 << 30));
    }
}
