//! Migration URIs: the single parser for every `migrate` / `migrate-incoming` address.
//!
//! QEMU matches the scheme by literal prefix (`strstart`), so schemes are case-sensitive.
//! Both directions use the same syntax; only `fd:` is interpreted differently (see
//! [`MigrationUri::Fd`]).
//!
//! | URI | variant | notes |
//! | --- | --- | --- |
//! | `tcp:HOST:PORT` | [`MigrationUri::Tcp`] | `HOST` may be empty (`tcp::4444`: any address when listening, localhost when connecting) or a bracketed IPv6 address (`tcp:[::1]:4444`); host ≤ 64 chars; port 0 listens on an ephemeral port. QEMU's `,to=`/`,ipv4=`/… options are rejected. |
//! | `unix:PATH` | [`MigrationUri::Unix`] | |
//! | `fd:NAME` | [`MigrationUri::Fd`] | outgoing: a name from the monitor's `getfd` table; incoming: a name or a decimal fd number |
//! | `exec:CMD` | [`MigrationUri::Exec`] | everything after the colon, spaces included, run by `/bin/sh -c` |
//! | `file:PATH[,offset=N]` | [`MigrationUri::File`] | QEMU 8.2+ syntax; `N` is decimal, `0x` hex, or a size with a `K`/`M`/`G`/`T` suffix (binary units) |
//!
//! `vsock:` and `rdma:` are recognised and reported as unsupported; anything else is an
//! unknown scheme. Callers turn [`UriErrorReason::UnknownScheme`] into QEMU's texts
//! ("Parameter 'uri' expects a valid migration protocol" outgoing, "unknown migration
//! protocol: URI" incoming).
//!
//! [`Display`](std::fmt::Display) prints the canonical form, which parses back to the same
//! value.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Longest host QEMU's `inet_parse` accepts (`%64[^:]`).
pub const MAX_HOST_LEN: usize = 64;
/// Longest port text QEMU's `inet_parse` accepts (`%32[^,]`).
pub const MAX_PORT_LEN: usize = 32;

/// A parsed migration URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MigrationUri {
    /// `tcp:HOST:PORT`.
    Tcp {
        /// Host name or address, without IPv6 brackets; empty means "any address" when
        /// listening and the local host when connecting.
        host: String,
        /// TCP port; 0 asks for an ephemeral port when listening.
        port: u16,
    },
    /// `unix:PATH`: a unix stream socket.
    Unix(PathBuf),
    /// `fd:NAME`: a descriptor passed with `getfd` (outgoing and incoming), or a decimal fd
    /// number the process already owns (incoming only, like QEMU's `-incoming fd:3`).
    Fd(String),
    /// `exec:CMD`: the stream goes to the command's stdin (outgoing) or comes from its
    /// stdout (incoming).
    Exec(String),
    /// `file:PATH[,offset=N]`: the stream is written to / read from a regular file, starting
    /// at byte `offset`.
    File {
        /// The file.
        path: PathBuf,
        /// Byte offset of the stream in the file.
        offset: u64,
    },
}

/// Why a URI was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriErrorReason {
    /// No known `scheme:` prefix.
    #[error("the migration protocol is unknown")]
    UnknownScheme,
    /// A QEMU scheme this implementation does not provide.
    #[error("the '{0}' migration protocol is not supported")]
    UnsupportedScheme(&'static str),
    /// `tcp:` without `:PORT`.
    #[error("the port is missing")]
    MissingPort,
    /// The port is not a decimal number in 0..=65535 (service names are not supported).
    #[error("the port '{0}' is not a number between 0 and 65535")]
    InvalidPort(String),
    /// The host is longer than [`MAX_HOST_LEN`].
    #[error("the host is longer than {MAX_HOST_LEN} characters")]
    HostTooLong,
    /// `[` without `]`, or `[]`.
    #[error("the bracketed IPv6 address is malformed")]
    BadBracketedHost,
    /// A `,option` QEMU accepts but this implementation does not.
    #[error("the option '{0}' is not supported")]
    UnsupportedOption(String),
    /// `unix:` or `file:` with an empty path.
    #[error("the path is empty")]
    EmptyPath,
    /// `exec:` with nothing after the colon.
    #[error("the command is empty")]
    EmptyCommand,
    /// `fd:` with nothing after the colon.
    #[error("the file descriptor name is empty")]
    EmptyFdName,
    /// The `offset=` value of a `file:` URI.
    #[error("the offset '{0}' is not a valid size")]
    InvalidOffset(String),
}

/// A URI that could not be parsed, with the text that was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid migration URI '{uri}'")]
pub struct UriError {
    /// The URI as given.
    pub uri: String,
    /// Why it was rejected.
    #[source]
    pub reason: UriErrorReason,
}

impl UriError {
    fn new(uri: &str, reason: UriErrorReason) -> Self {
        UriError {
            uri: uri.to_owned(),
            reason,
        }
    }
}

impl MigrationUri {
    /// The scheme name without the colon (`"tcp"`, `"unix"`, `"fd"`, `"exec"`, `"file"`).
    pub fn scheme(&self) -> &'static str {
        match self {
            MigrationUri::Tcp { .. } => "tcp",
            MigrationUri::Unix(_) => "unix",
            MigrationUri::Fd(_) => "fd",
            MigrationUri::Exec(_) => "exec",
            MigrationUri::File { .. } => "file",
        }
    }

    /// Whether more channels (multifd, postcopy preempt) can be opened to the same address.
    /// QEMU: only socket addresses; `exec:`, `fd:` and `file:` carry one stream.
    pub fn supports_multiple_channels(&self) -> bool {
        matches!(self, MigrationUri::Tcp { .. } | MigrationUri::Unix(_))
    }
}

impl FromStr for MigrationUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        let err = |reason| UriError::new(uri, reason);
        if let Some(rest) = uri.strip_prefix("tcp:") {
            parse_tcp(rest).map_err(err)
        } else if let Some(rest) = uri.strip_prefix("unix:") {
            if rest.is_empty() {
                return Err(err(UriErrorReason::EmptyPath));
            }
            Ok(MigrationUri::Unix(PathBuf::from(rest)))
        } else if let Some(rest) = uri.strip_prefix("fd:") {
            if rest.is_empty() {
                return Err(err(UriErrorReason::EmptyFdName));
            }
            Ok(MigrationUri::Fd(rest.to_owned()))
        } else if let Some(rest) = uri.strip_prefix("exec:") {
            if rest.trim().is_empty() {
                return Err(err(UriErrorReason::EmptyCommand));
            }
            Ok(MigrationUri::Exec(rest.to_owned()))
        } else if let Some(rest) = uri.strip_prefix("file:") {
            parse_file(rest).map_err(err)
        } else if uri.starts_with("vsock:") {
            Err(err(UriErrorReason::UnsupportedScheme("vsock")))
        } else if uri.starts_with("rdma:") {
            Err(err(UriErrorReason::UnsupportedScheme("rdma")))
        } else {
            Err(err(UriErrorReason::UnknownScheme))
        }
    }
}

/// `HOST:PORT[,opt=val...]` after `tcp:`.
fn parse_tcp(rest: &str) -> Result<MigrationUri, UriErrorReason> {
    let (host, after_host) = if let Some(inner) = rest.strip_prefix('[') {
        let close = inner.find(']').ok_or(UriErrorReason::BadBracketedHost)?;
        let host = &inner[..close];
        if host.is_empty() {
            return Err(UriErrorReason::BadBracketedHost);
        }
        (host, &inner[close + 1..])
    } else {
        match rest.find(':') {
            Some(colon) => (&rest[..colon], &rest[colon..]),
            None => return Err(UriErrorReason::MissingPort),
        }
    };
    if host.len() > MAX_HOST_LEN {
        return Err(UriErrorReason::HostTooLong);
    }
    let port_and_opts = after_host
        .strip_prefix(':')
        .ok_or(UriErrorReason::MissingPort)?;
    let (port, opts) = match port_and_opts.find(',') {
        Some(comma) => (&port_and_opts[..comma], Some(&port_and_opts[comma + 1..])),
        None => (port_and_opts, None),
    };
    if let Some(opts) = opts {
        let first = opts.split(',').next().unwrap_or(opts);
        return Err(UriErrorReason::UnsupportedOption(first.to_owned()));
    }
    if port.is_empty() {
        return Err(UriErrorReason::MissingPort);
    }
    if port.len() > MAX_PORT_LEN || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UriErrorReason::InvalidPort(port.to_owned()));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| UriErrorReason::InvalidPort(port.to_owned()))?;
    Ok(MigrationUri::Tcp {
        host: host.to_owned(),
        port,
    })
}

/// `PATH[,offset=N]` after `file:`. Like QEMU, the first `,offset=` ends the path.
fn parse_file(rest: &str) -> Result<MigrationUri, UriErrorReason> {
    const OFFSET: &str = ",offset=";
    let (path, offset) = match rest.find(OFFSET) {
        Some(at) => (&rest[..at], parse_size(&rest[at + OFFSET.len()..])?),
        None => (rest, 0),
    };
    if path.is_empty() {
        return Err(UriErrorReason::EmptyPath);
    }
    Ok(MigrationUri::File {
        path: PathBuf::from(path),
        offset,
    })
}

/// A byte count: decimal, `0x` hex, or decimal with a binary-unit suffix (B, K, M, G, T).
fn parse_size(text: &str) -> Result<u64, UriErrorReason> {
    let bad = || UriErrorReason::InvalidOffset(text.to_owned());
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    let digits_end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(bad()),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    value.checked_mul(1u64 << shift).ok_or_else(bad)
}

impl fmt::Display for MigrationUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationUri::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            MigrationUri::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            MigrationUri::Unix(path) => write!(f, "unix:{}", path.display()),
            MigrationUri::Fd(name) => write!(f, "fd:{name}"),
            MigrationUri::Exec(cmd) => write!(f, "exec:{cmd}"),
            MigrationUri::File { path, offset: 0 } => write!(f, "file:{}", path.display()),
            MigrationUri::File { path, offset } => {
                write!(f, "file:{},offset={offset}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UriErrorReason as R;

    fn tcp(host: &str, port: u16) -> MigrationUri {
        MigrationUri::Tcp {
            host: host.into(),
            port,
        }
    }

    fn file(path: &str, offset: u64) -> MigrationUri {
        MigrationUri::File {
            path: path.into(),
            offset,
        }
    }

    /// (input, expected value, canonical Display form).
    fn valid_cases() -> Vec<(&'static str, MigrationUri, &'static str)> {
        vec![
            (
                "tcp:127.0.0.1:4444",
                tcp("127.0.0.1", 4444),
                "tcp:127.0.0.1:4444",
            ),
            ("tcp:localhost:0", tcp("localhost", 0), "tcp:localhost:0"),
            ("tcp::4444", tcp("", 4444), "tcp::4444"),
            ("tcp:[::1]:4444", tcp("::1", 4444), "tcp:[::1]:4444"),
            (
                "tcp:[fe80::1%eth0]:1",
                tcp("fe80::1%eth0", 1),
                "tcp:[fe80::1%eth0]:1",
            ),
            ("tcp:host:65535", tcp("host", 65535), "tcp:host:65535"),
            ("tcp:host:00080", tcp("host", 80), "tcp:host:80"),
            (
                "unix:/tmp/mig.sock",
                MigrationUri::Unix("/tmp/mig.sock".into()),
                "unix:/tmp/mig.sock",
            ),
            (
                "unix:rel/sock",
                MigrationUri::Unix("rel/sock".into()),
                "unix:rel/sock",
            ),
            ("fd:mig", MigrationUri::Fd("mig".into()), "fd:mig"),
            ("fd:3", MigrationUri::Fd("3".into()), "fd:3"),
            (
                "exec:cat > /tmp/f",
                MigrationUri::Exec("cat > /tmp/f".into()),
                "exec:cat > /tmp/f",
            ),
            (
                "exec:gzip -c | ssh x 'cat > a:b'",
                MigrationUri::Exec("gzip -c | ssh x 'cat > a:b'".into()),
                "exec:gzip -c | ssh x 'cat > a:b'",
            ),
            (
                "file:/tmp/vm.mig",
                file("/tmp/vm.mig", 0),
                "file:/tmp/vm.mig",
            ),
            (
                "file:/tmp/vm.mig,offset=0",
                file("/tmp/vm.mig", 0),
                "file:/tmp/vm.mig",
            ),
            (
                "file:/tmp/vm.mig,offset=4096",
                file("/tmp/vm.mig", 4096),
                "file:/tmp/vm.mig,offset=4096",
            ),
            (
                "file:/a,offset=0x1000",
                file("/a", 4096),
                "file:/a,offset=4096",
            ),
            ("file:/a,offset=4K", file("/a", 4096), "file:/a,offset=4096"),
            (
                "file:/a,offset=2m",
                file("/a", 2 << 20),
                "file:/a,offset=2097152",
            ),
            ("file:/a,b,offset=1", file("/a,b", 1), "file:/a,b,offset=1"),
        ]
    }

    #[test]
    fn valid_uris_parse_and_print_canonically() {
        for (input, expected, canonical) in valid_cases() {
            let parsed: MigrationUri = input
                .parse()
                .unwrap_or_else(|e| panic!("{input} should parse: {e:?}"));
            assert_eq!(parsed, expected, "{input}");
            assert_eq!(parsed.to_string(), canonical, "{input}");
            let again: MigrationUri = canonical.parse().expect("canonical form parses");
            assert_eq!(again, expected, "canonical form of {input} round-trips");
        }
    }

    #[test]
    fn invalid_uris_are_rejected_with_the_reason() {
        let long_host = format!("tcp:{}:1", "h".repeat(MAX_HOST_LEN + 1));
        let cases: Vec<(&str, UriErrorReason)> = vec![
            ("", R::UnknownScheme),
            ("foo:bar", R::UnknownScheme),
            ("TCP:127.0.0.1:4444", R::UnknownScheme),
            ("127.0.0.1:4444", R::UnknownScheme),
            ("defer", R::UnknownScheme),
            ("vsock:3:4444", R::UnsupportedScheme("vsock")),
            ("rdma:host:4444", R::UnsupportedScheme("rdma")),
            ("tcp:", R::MissingPort),
            ("tcp:host", R::MissingPort),
            ("tcp:host:", R::MissingPort),
            ("tcp:[::1]", R::MissingPort),
            ("tcp:[::1]4444", R::MissingPort),
            ("tcp:[::1:4444", R::BadBracketedHost),
            ("tcp:[]:4444", R::BadBracketedHost),
            ("tcp:host:http", R::InvalidPort("http".into())),
            ("tcp:host:65536", R::InvalidPort("65536".into())),
            ("tcp:host:-1", R::InvalidPort("-1".into())),
            ("tcp:::1:4444", R::InvalidPort(":1:4444".into())),
            ("tcp:host:1,to=5", R::UnsupportedOption("to=5".into())),
            (
                "tcp:host:1,ipv4=on,ipv6=off",
                R::UnsupportedOption("ipv4=on".into()),
            ),
            ("unix:", R::EmptyPath),
            ("fd:", R::EmptyFdName),
            ("exec:", R::EmptyCommand),
            ("exec:   ", R::EmptyCommand),
            ("file:", R::EmptyPath),
            ("file:,offset=1", R::EmptyPath),
            ("file:/a,offset=", R::InvalidOffset("".into())),
            ("file:/a,offset=x", R::InvalidOffset("x".into())),
            ("file:/a,offset=-1", R::InvalidOffset("-1".into())),
            ("file:/a,offset=1Q", R::InvalidOffset("1Q".into())),
            ("file:/a,offset=0x", R::InvalidOffset("0x".into())),
            (
                "file:/a,offset=99999999999T",
                R::InvalidOffset("99999999999T".into()),
            ),
            (
                "file:/a,offset=18446744073709551616",
                R::InvalidOffset("18446744073709551616".into()),
            ),
        ];
        let owned_long = (long_host.as_str(), R::HostTooLong);
        for (input, reason) in cases.into_iter().chain(std::iter::once(owned_long)) {
            let err = input
                .parse::<MigrationUri>()
                .expect_err(&format!("{input} should be rejected"));
            assert_eq!(err.uri, input, "error names the URI");
            assert_eq!(err.reason, reason, "{input}");
            assert_eq!(err.to_string(), format!("invalid migration URI '{input}'"));
        }
    }

    #[test]
    fn scheme_and_multichannel_support() {
        assert_eq!(tcp("a", 1).scheme(), "tcp");
        assert!(tcp("a", 1).supports_multiple_channels());
        assert!(MigrationUri::Unix("/s".into()).supports_multiple_channels());
        assert!(!MigrationUri::Fd("x".into()).supports_multiple_channels());
        assert!(!MigrationUri::Exec("cat".into()).supports_multiple_channels());
        assert!(!file("/a", 0).supports_multiple_channels());
        assert_eq!(file("/a", 0).scheme(), "file");
    }
}
