//! Splitting the QMP input byte stream into JSON values.
//!
//! QMP input is a *stream* of JSON values, not lines: `qemu.qmp` for instance sends
//! `{"execute":"query-status"}` with no newline. [`JsonSplitter`] finds where each top-level
//! value ends by tracking string and nesting state (like QEMU's json-streamer), so values
//! may arrive split across reads or several in one read. Parsing the value is left to
//! `serde_json`; a malformed value still has a well-defined end (its closing bracket), so
//! one bad request does not poison the connection.
//!
//! ```text
//!  bytes:  {"execute":"a"}  {"exec  ute":"b"}\n[1,  2]  "x"  42\n
//!          └──value 1──┘   └──value 2 (2 reads)─┘ └─3──┘ └4┘ └5┘
//! ```

/// Deepest nesting accepted (QEMU's limit).
pub const MAX_NESTING: u32 = 1024;

/// Why the stream cannot continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// More than [`MAX_NESTING`] open brackets.
    TooDeep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between values.
    Idle,
    /// Inside an object or array.
    Nested { depth: u32, in_str: bool, esc: bool },
    /// A top-level string.
    Str { esc: bool },
    /// A top-level number or literal.
    Scalar,
}

/// Incremental splitter; feed bytes with [`push`](Self::push), take values with
/// [`next_value`](Self::next_value).
#[derive(Debug)]
pub struct JsonSplitter {
    buf: Vec<u8>,
    scan: usize,
    start: usize,
    state: State,
}

impl Default for JsonSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonSplitter {
    /// An empty splitter.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            scan: 0,
            start: 0,
            state: State::Idle,
        }
    }

    /// Appends input bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes of the value being assembled (whitespace between values excluded).
    pub fn pending(&self) -> usize {
        if self.state == State::Idle {
            0
        } else {
            self.buf.len() - self.start
        }
    }

    /// The bytes of the next complete top-level value, if one is complete.
    pub fn next_value(&mut self) -> Option<Result<Vec<u8>, SplitError>> {
        while let Some(&b) = self.buf.get(self.scan) {
            let i = self.scan;
            self.scan += 1;
            let end = match &mut self.state {
                State::Idle => {
                    match b {
                        b' ' | b'\t' | b'\r' | b'\n' => {}
                        b'{' | b'[' => {
                            self.start = i;
                            self.state = State::Nested {
                                depth: 1,
                                in_str: false,
                                esc: false,
                            };
                        }
                        b'"' => {
                            self.start = i;
                            self.state = State::Str { esc: false };
                        }
                        b'}' | b']' => {
                            // A lone closing bracket is a complete (invalid) value.
                            self.start = i;
                            return Some(Ok(self.take(i + 1)));
                        }
                        _ => {
                            self.start = i;
                            self.state = State::Scalar;
                        }
                    }
                    None
                }
                State::Nested { depth, in_str, esc } => {
                    if *in_str {
                        if *esc {
                            *esc = false;
                        } else if b == b'\\' {
                            *esc = true;
                        } else if b == b'"' {
                            *in_str = false;
                        }
                        None
                    } else {
                        match b {
                            b'"' => *in_str = true,
                            b'{' | b'[' => {
                                *depth += 1;
                                if *depth > MAX_NESTING {
                                    return Some(Err(SplitError::TooDeep));
                                }
                            }
                            b'}' | b']' => *depth -= 1,
                            _ => {}
                        }
                        (*depth == 0).then_some(i + 1)
                    }
                }
                State::Str { esc } => {
                    if *esc {
                        *esc = false;
                        None
                    } else if b == b'\\' {
                        *esc = true;
                        None
                    } else {
                        (b == b'"').then_some(i + 1)
                    }
                }
                State::Scalar => {
                    if b.is_ascii_whitespace() || b"{}[]\",:".contains(&b) {
                        self.scan = i; // the delimiter starts the next value
                        Some(i)
                    } else {
                        None
                    }
                }
            };
            if let Some(end) = end {
                return Some(Ok(self.take(end)));
            }
        }
        if self.state == State::Idle {
            self.buf.clear();
            self.scan = 0;
            self.start = 0;
        }
        None
    }

    fn take(&mut self, end: usize) -> Vec<u8> {
        let value = self.buf.get(self.start..end).unwrap_or(&[]).to_vec();
        self.buf.drain(..end);
        self.scan -= end.min(self.scan);
        self.start = 0;
        self.state = State::Idle;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &mut JsonSplitter) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = s.next_value() {
            out.push(String::from_utf8(v.unwrap()).unwrap());
        }
        out
    }

    #[test]
    fn splits_values_across_reads() {
        let mut s = JsonSplitter::new();
        s.push(br#"{"execute":"a"}  {"exec"#);
        assert_eq!(all(&mut s), vec![r#"{"execute":"a"}"#]);
        assert!(s.pending() > 0);
        s.push(br#"ute":"b}{"}"#);
        assert_eq!(all(&mut s), vec![r#"{"execute":"b}{"}"#]);
        s.push(b"\n[1, [2]] \"x\\\"y\" 42\n}");
        assert_eq!(all(&mut s), vec!["[1, [2]]", "\"x\\\"y\"", "42", "}"]);
        assert_eq!(s.pending(), 0);
        s.push(b"42");
        assert_eq!(all(&mut s), Vec::<String>::new());
        s.push(b"{");
        assert_eq!(all(&mut s), vec!["42"]);
    }

    #[test]
    fn nesting_limit() {
        let mut s = JsonSplitter::new();
        s.push(&vec![b'['; MAX_NESTING as usize + 1]);
        assert_eq!(s.next_value(), Some(Err(SplitError::TooDeep)));
    }
}
