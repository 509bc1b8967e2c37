//! `--extract DIR`: rebuild each RAM block's final content as a file.
//!
//! Each block of the MEM_SIZE list becomes `DIR/<idstr>` (leading `/` dropped, so
//! `/rom@etc/acpi/tables` becomes `DIR/rom@etc/acpi/tables`), created sparse with
//! `set_len(used_length)`. Records are applied in stream order, exactly like a receiving
//! QEMU applies them to guest RAM:
//!
//! | record | effect on the file |
//! | --- | --- |
//! | PAGE | the 4 KiB payload is written at the page offset |
//! | ZERO fill | the page is filled with `fill`; skipped when `fill == 0` and the page was never written (it is still a hole, i.e. zero) |
//! | XBZRLE | the current page is read back, the delta applied in place, the page rewritten |
//!
//! so after the last record the file holds the last version of every page. Block names are
//! untrusted: `..`, `.`, NUL and empty names are rejected, and two names that map to the
//! same path are an error, so nothing is ever written outside `DIR` or twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use savevm::ram::TARGET_PAGE_SIZE;

use crate::error::AnalyzeError;
use crate::pages::PageSet;

/// Maps a RAM block idstr to a relative path, refusing anything that could escape.
pub fn relative_path(idstr: &str) -> Option<PathBuf> {
    if idstr.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for part in idstr.split('/') {
        match part {
            "" => continue,
            "." | ".." => return None,
            p => out.push(p),
        }
    }
    // Re-check with the platform's own parser: only normal components allowed.
    if out.as_os_str().is_empty() || !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(out)
}

struct BlockFile {
    path: PathBuf,
    file: File,
    /// Pages that hold written (possibly non-zero) data.
    written: PageSet,
}

/// Writes RAM blocks into a directory as the records stream by.
pub struct Extractor {
    dir: PathBuf,
    max_chunks: usize,
    files: Vec<BlockFile>,
    paths: HashSet<PathBuf>,
    page: Vec<u8>,
}

impl Extractor {
    /// Prepares extraction into `dir` (created if missing). Each block remembers which pages
    /// hold data in at most `max_chunks` chunks of 512 pages ([`crate::Limits::page_chunks`]);
    /// past that, zero pages are written out instead of being left as holes, so the files
    /// stay exact.
    pub fn new(dir: &Path, max_chunks: usize) -> Result<Extractor, AnalyzeError> {
        std::fs::create_dir_all(dir).map_err(|source| AnalyzeError::Extract {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Extractor {
            dir: dir.to_path_buf(),
            max_chunks,
            files: Vec::new(),
            paths: HashSet::new(),
            page: vec![0u8; TARGET_PAGE_SIZE],
        })
    }

    /// Creates the sparse file for the next block of the MEM_SIZE list; returns its index.
    pub fn add_block(&mut self, idstr: &str, used_length: u64) -> Result<usize, AnalyzeError> {
        let rel = relative_path(idstr).ok_or_else(|| AnalyzeError::UnsafeBlockName {
            block: idstr.to_string(),
        })?;
        if !self.paths.insert(rel.clone()) {
            return Err(AnalyzeError::UnsafeBlockName {
                block: idstr.to_string(),
            });
        }
        let path = self.dir.join(&rel);
        let io = |source| AnalyzeError::Extract {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io)?;
        file.set_len(used_length).map_err(io)?;
        self.files.push(BlockFile {
            path,
            file,
            written: PageSet::new(self.max_chunks),
        });
        Ok(self.files.len() - 1)
    }

    fn block(&mut self, index: usize) -> &mut BlockFile {
        // Indices come from add_block; the RAM walker never invents one.
        &mut self.files[index]
    }

    /// Applies a PAGE record.
    pub fn page(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<(), AnalyzeError> {
        let f = self.block(index);
        f.written.insert(offset / TARGET_PAGE_SIZE as u64);
        f.file
            .write_all_at(data, offset)
            .map_err(|source| AnalyzeError::Extract {
                path: f.path.clone(),
                source,
            })
    }

    /// Applies a ZERO record.
    pub fn zero(&mut self, index: usize, offset: u64, fill: u8) -> Result<(), AnalyzeError> {
        let page_no = offset / TARGET_PAGE_SIZE as u64;
        if fill == 0 && !self.block(index).written.may_contain(page_no) {
            return Ok(()); // still a hole: reads back as zero
        }
        self.page.fill(fill);
        let Extractor { files, page, .. } = self;
        let f = &mut files[index];
        f.written.insert(page_no);
        f.file
            .write_all_at(page, offset)
            .map_err(|source| AnalyzeError::Extract {
                path: f.path.clone(),
                source,
            })
    }

    /// Applies an XBZRLE record: decode `encoded` over the page's current content.
    /// Returns the decoder's error as `Ok(Err(..))` so the caller can attach context.
    pub fn xbzrle(
        &mut self,
        index: usize,
        offset: u64,
        encoded: &[u8],
    ) -> Result<Result<(), savevm::Error>, AnalyzeError> {
        let Extractor { files, page, .. } = self;
        let f = &mut files[index];
        let io = |source| AnalyzeError::Extract {
            path: f.path.clone(),
            source,
        };
        f.file.read_exact_at(page, offset).map_err(io)?;
        if let Err(e) = savevm::ram::xbzrle::decode(encoded, page) {
            return Ok(Err(e));
        }
        f.written.insert(offset / TARGET_PAGE_SIZE as u64);
        f.file.write_all_at(page, offset).map_err(io)?;
        Ok(Ok(()))
    }

    /// Paths of the files written, in block order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_never_escape() {
        assert_eq!(
            relative_path("/rom@etc/acpi/tables"),
            Some(PathBuf::from("rom@etc/acpi/tables"))
        );
        assert_eq!(relative_path("pc.ram"), Some(PathBuf::from("pc.ram")));
        assert_eq!(
            relative_path("0000:00:02.0/vga.vram"),
            Some(PathBuf::from("0000:00:02.0/vga.vram"))
        );
        assert_eq!(relative_path("//a//b"), Some(PathBuf::from("a/b")));
        for bad in ["..", "../x", "a/../../b", "/", "", ".", "a/./b", "a\0b"] {
            assert_eq!(relative_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn applies_records_in_order_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(dir.path(), 16).unwrap();
        let b = x.add_block("/rom@etc/t", 4 * 4096).unwrap();
        x.page(b, 4096, &[7u8; 4096]).unwrap();
        x.zero(b, 4096, 0).unwrap(); // page written before: must become zero
        x.zero(b, 2 * 4096, 0x11).unwrap();
        x.page(b, 3 * 4096, &[1u8; 4096]).unwrap();
        // xbzrle: zrun 2, nzrun 1 byte 0xee
        x.xbzrle(b, 3 * 4096, &[2, 1, 0xee]).unwrap().unwrap();
        assert!(x.xbzrle(b, 0, &[0, 0]).unwrap().is_err());
        let data = std::fs::read(dir.path().join("rom@etc/t")).unwrap();
        assert_eq!(data.len(), 4 * 4096);
        assert!(data[..2 * 4096].iter().all(|&v| v == 0));
        assert!(data[2 * 4096..3 * 4096].iter().all(|&v| v == 0x11));
        assert_eq!(&data[3 * 4096..3 * 4096 + 4], &[1, 1, 0xee, 1]);
        assert!(matches!(
            x.add_block("rom@etc/t", 4096),
            Err(AnalyzeError::UnsafeBlockName { .. })
        ));
        assert!(matches!(
            x.add_block("../evil", 4096),
            Err(AnalyzeError::UnsafeBlockName { .. })
        ));
    }
}
