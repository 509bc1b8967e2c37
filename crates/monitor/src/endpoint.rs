//! Monitor endpoint specs in QEMU's chardev syntax (`-qmp` / `-monitor` arguments).
//!
//! | spec | meaning |
//! | --- | --- |
//! | `unix:PATH[,server=on\|off][,wait=on\|off]` | unix socket; `server` (also bare `server`) listens, otherwise connects |
//! | `tcp:[HOST]:PORT[,server=on\|off][,wait=on\|off]` | TCP; an empty host means 127.0.0.1 (loopback), `[::1]` for IPv6 |
//! | `stdio` | standard input / output |
//!
//! `nowait` is accepted as the old spelling of `wait=off`. As in QEMU, `wait` defaults to on
//! for servers: the caller waits for the first client before going on.

use std::path::PathBuf;

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSpec {
    /// A unix socket.
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Listen (true) or connect (false).
        server: bool,
        /// For servers: wait for the first client before returning.
        wait: bool,
    },
    /// A TCP socket.
    Tcp {
        /// Host name or address (without IPv6 brackets).
        host: String,
        /// Port (0 = any free port, for servers).
        port: u16,
        /// Listen (true) or connect (false).
        server: bool,
        /// For servers: wait for the first client before returning.
        wait: bool,
    },
    /// Standard input and output.
    Stdio,
}

/// A spec that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid monitor endpoint '{spec}': {reason}")]
pub struct EndpointError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Parses an endpoint spec.
pub fn parse_endpoint(spec: &str) -> Result<EndpointSpec, EndpointError> {
    let err = |reason: String| EndpointError {
        spec: spec.to_string(),
        reason,
    };
    if spec == "stdio" {
        return Ok(EndpointSpec::Stdio);
    }
    let (scheme, rest) = spec
        .split_once(':')
        .ok_or_else(|| err("expected unix:, tcp: or stdio".into()))?;
    let mut parts = rest.split(',');
    let addr = parts.next().unwrap_or_default();
    let mut server = false;
    let mut wait = true;
    for opt in parts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let flag = match value {
            None => true,
            Some(v) => on_off(v).ok_or_else(|| err(format!("'{v}' is not on or off")))?,
        };
        match key {
            "server" => server = flag,
            "wait" => wait = flag,
            "nowait" if value.is_none() => wait = false,
            _ => return Err(err(format!("unknown option '{opt}'"))),
        }
    }
    match scheme {
        "unix" => {
            if addr.is_empty() {
                return Err(err("missing socket path".into()));
            }
            Ok(EndpointSpec::Unix {
                path: PathBuf::from(addr),
                server,
                wait,
            })
        }
        "tcp" => {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| err("expected HOST:PORT".into()))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| err(format!("bad port '{port}'")))?;
            let host = match host {
                "" => "127.0.0.1".to_string(),
                h if h.len() >= 2 && h.starts_with('[') && h.ends_with(']') => {
                    h[1..h.len() - 1].to_string()
                }
                h if h.contains(':') => return Err(err("put IPv6 addresses in brackets".into())),
                h if h.contains(['[', ']']) => return Err(err(format!("bad host '{h}'"))),
                h => h.to_string(),
            };
            Ok(EndpointSpec::Tcp {
                host,
                port,
                server,
                wait,
            })
        }
        other => Err(err(format!("unknown scheme '{other}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Option<EndpointSpec>)] = &[
            ("stdio", Some(EndpointSpec::Stdio)),
            (
                "unix:/tmp/q.sock,server=on,wait=off",
                Some(EndpointSpec::Unix {
                    path: "/tmp/q.sock".into(),
                    server: true,
                    wait: false,
                }),
            ),
            (
                "unix:/tmp/q.sock,server,nowait",
                Some(EndpointSpec::Unix {
                    path: "/tmp/q.sock".into(),
                    server: true,
                    wait: false,
                }),
            ),
            (
                "unix:/tmp/q.sock",
                Some(EndpointSpec::Unix {
                    path: "/tmp/q.sock".into(),
                    server: false,
                    wait: true,
                }),
            ),
            (
                "tcp:127.0.0.1:4444,server=on,wait=off",
                Some(EndpointSpec::Tcp {
                    host: "127.0.0.1".into(),
                    port: 4444,
                    server: true,
                    wait: false,
                }),
            ),
            (
                "tcp::4444,server",
                Some(EndpointSpec::Tcp {
                    host: "127.0.0.1".into(),
                    port: 4444,
                    server: true,
                    wait: true,
                }),
            ),
            (
                "tcp:[::1]:0,server=on",
                Some(EndpointSpec::Tcp {
                    host: "::1".into(),
                    port: 0,
                    server: true,
                    wait: true,
                }),
            ),
            ("tcp:::1:5", None),
            ("tcp:[:5", None),
            ("tcp:]:5", None),
            ("tcp:host", None),
            ("tcp:host:99999", None),
            ("unix:", None),
            ("unix:/x,server=maybe", None),
            ("unix:/x,telnet", None),
            ("vsock:3:4", None),
            ("/tmp/q.sock", None),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_endpoint(spec).ok(), *want, "{spec}");
        }
        let e = parse_endpoint("unix:/x,bogus=on").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid monitor endpoint 'unix:/x,bogus=on': unknown option 'bogus=on'"
        );
    }
}
