//! livemig's block layer: the VM's disks.
//!
//! | module | what |
//! | --- | --- |
//! | [`spec`] | [`DriveSpec`]: `--drive file=PATH,format=raw\|qcow2[,id=NAME]` |
//! | [`disk`] | [`Disk`]: an image opened with `imago` (raw, qcow2 with backing chains): I/O, top-layer allocation, in-place incoming migrations with an undo journal |
//! | [`lock`] | [`ImageLock`]: QEMU-compatible OFD locks on every image file a [`Disk`] opens |
//! | [`dirty`] | [`DirtyBitmap`]: 1 MiB dirty chunks recorded while block migration runs |
//! | [`writer`] | [`DiskWriter`]: the software guest's disk workload, pausable like a vCPU |
//!
//! Threads, no async: imago is built with its `sync` feature, so every call is a plain
//! blocking call. A [`Disk`] is shared as `Arc<Disk>` between the guest's writer thread and the
//! migration thread.
//!
//! ```no_run
//! use std::sync::Arc;
//! use block::{Disk, DriveSpec};
//!
//! let spec = DriveSpec::parse("file=/tmp/disk.qcow2,format=qcow2", 0)?;
//! let disk = Arc::new(Disk::open(&spec)?);
//! disk.dirty().start();
//! disk.write(0, &[1u8; 4096])?;
//! assert_eq!(disk.dirty().next_dirty(0), Some(0));
//! # Ok::<(), block::BlockError>(())
//! ```

#![deny(missing_docs)]

mod digest;
pub mod dirty;
pub mod disk;
mod error;
pub mod lock;
pub mod spec;
mod undo;
pub mod writer;

pub use digest::DIGEST_CHUNK;
pub use dirty::{DirtyBitmap, CHUNK_SIZE};
pub use disk::Disk;
pub use error::BlockError;
pub use lock::{ImageLock, Perms};
pub use spec::{DiskFormat, DriveSpec};
pub use writer::{DiskWriter, DiskWriterConfig, WritePattern, WriterStats, WRITE_BLOCK};
