//! `--drive` options: [`DriveSpec`] parsed from `file=PATH,format=raw|qcow2[,id=NAME]`.
//!
//! The syntax is QEMU's option syntax: `key=value` pairs separated by commas, a literal comma
//! inside a value written as `,,`. `file` and `format` are required (livemig does not probe
//! formats: a probed raw image can be mistaken for another format, which is exactly what QEMU
//! warns about). `id` names the drive on the migration wire; without it the drives are named
//! `drive0`, `drive1`, ... by their position on the command line (QEMU names anonymous `-drive`
//! block backends by index too), so source and destination must list them in the same order or
//! give matching ids.

use std::fmt;
use std::path::PathBuf;

use crate::error::BlockError;

/// Image format of a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw image: the file is the disk.
    Raw,
    /// qcow2 (v2 or v3), possibly with a backing file.
    Qcow2,
}

impl DiskFormat {
    /// The QEMU name (`raw`, `qcow2`).
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `--drive` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Drive id: the device name in block-migration records (at most 255 bytes).
    pub id: String,
    /// Image path.
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
}

/// Splits QEMU option text at single commas; `,,` is a literal comma.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            cur.push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else {
            parts.push(std::mem::take(&mut cur));
        }
    }
    parts.push(cur);
    parts
}

impl DriveSpec {
    /// Parses one option; `index` (the position among the `--drive` options) names a drive
    /// without `id` as `drive<index>`.
    pub fn parse(s: &str, index: usize) -> Result<Self, BlockError> {
        let err = |reason: String| BlockError::DriveSpec {
            spec: s.to_string(),
            reason,
        };
        let (mut file, mut format, mut id) = (None, None, None);
        for part in split_options(s) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("'{part}' is not key=value")))?;
            let slot = match key {
                "file" => &mut file,
                "format" => &mut format,
                "id" => &mut id,
                other => return Err(err(format!("unknown key '{other}'"))),
            };
            if slot.is_some() {
                return Err(err(format!("'{key}' given twice")));
            }
            *slot = Some(value.to_string());
        }
        let file = file
            .filter(|f| !f.is_empty())
            .ok_or_else(|| err("'file' is required".into()))?;
        let format = match format.as_deref() {
            Some("raw") => DiskFormat::Raw,
            Some("qcow2") => DiskFormat::Qcow2,
            Some(other) => return Err(err(format!("format '{other}' is not raw or qcow2"))),
            None => return Err(err("'format' is required (raw or qcow2)".into())),
        };
        let id = id.unwrap_or_else(|| format!("drive{index}"));
        if id.is_empty() || id.len() > 255 {
            return Err(err("'id' must be 1 to 255 bytes".into()));
        }
        Ok(Self {
            id,
            path: PathBuf::from(file),
            format,
        })
    }

    /// Parses every `--drive` option in order and rejects duplicate ids.
    pub fn parse_all<S: AsRef<str>>(options: &[S]) -> Result<Vec<Self>, BlockError> {
        let mut out: Vec<Self> = Vec::with_capacity(options.len());
        for (i, s) in options.iter().enumerate() {
            let spec = Self::parse(s.as_ref(), i)?;
            if out.iter().any(|d| d.id == spec.id) {
                return Err(BlockError::DuplicateId(spec.id));
            }
            out.push(spec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let d = DriveSpec::parse("file=/a/b.qcow2,format=qcow2", 3).unwrap();
        assert_eq!(d.id, "drive3");
        assert_eq!(d.path, PathBuf::from("/a/b.qcow2"));
        assert_eq!(d.format, DiskFormat::Qcow2);
        let d = DriveSpec::parse("format=raw,id=disk,file=/x,,y", 0).unwrap();
        assert_eq!((d.id.as_str(), d.format), ("disk", DiskFormat::Raw));
        assert_eq!(d.path, PathBuf::from("/x,y"));
    }

    #[test]
    fn rejects_bad_options() {
        for bad in [
            "file=/a",
            "format=raw",
            "file=/a,format=vmdk",
            "file=/a,format=raw,cache=none",
            "file=/a,file=/b,format=raw",
            "file=/a,format=raw,id=",
            "/a",
        ] {
            assert!(DriveSpec::parse(bad, 0).is_err(), "{bad}");
        }
        let dup = DriveSpec::parse_all(&["file=/a,format=raw,id=d", "file=/b,format=raw,id=d"]);
        assert!(matches!(dup, Err(BlockError::DuplicateId(id)) if id == "d"));
        let ok = DriveSpec::parse_all(&["file=/a,format=raw", "file=/b,format=raw"]).unwrap();
        assert_eq!((ok[0].id.as_str(), ok[1].id.as_str()), ("drive0", "drive1"));
    }
}
