//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Errors from guest RAM allocation, access and dirty tracking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The block size is zero or not a multiple of the 4 KiB page size.
    #[error("RAM block size {size} is not a non-zero multiple of 4096 bytes")]
    BadSize {
        /// The rejected size in bytes.
        size: u64,
    },
    /// The block name is empty or longer than QEMU's 255-byte idstr limit.
    #[error("RAM block name {idstr:?} must be 1 to 255 bytes long")]
    BadName {
        /// The rejected name.
        idstr: String,
    },
    /// A memfd handed over by another process cannot back this block (see
    /// [`RamBlock::adopt_memfd`](crate::RamBlock::adopt_memfd)).
    #[error("RAM block `{idstr}` cannot take the handed-over memory: {reason}")]
    Adopt {
        /// The block.
        idstr: String,
        /// Why (not a memfd block, already adopted, size differs, not a regular file).
        reason: String,
        /// The OS error, if a system call failed.
        #[source]
        source: Option<io::Error>,
    },
    /// Creating the memfd backing failed.
    #[error("could not create a memfd for RAM block `{idstr}`")]
    Memfd {
        /// The block.
        idstr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening or creating the backing file failed.
    #[error("could not open backing file {path:?} for RAM block `{idstr}`")]
    OpenFile {
        /// The block.
        idstr: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sizing the backing file or memfd failed.
    #[error("could not resize the backing of RAM block `{idstr}` to {size} bytes")]
    Truncate {
        /// The block.
        idstr: String,
        /// The requested size.
        size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// mmap of the block failed.
    #[error("could not map RAM block `{idstr}`")]
    Mmap {
        /// The block.
        idstr: String,
        /// The mapping error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A page index is outside the block.
    #[error("page {page} is outside RAM block `{idstr}` of {pages} pages")]
    PageOutOfRange {
        /// The block.
        idstr: String,
        /// The rejected page index.
        page: u64,
        /// Number of pages in the block.
        pages: u64,
    },
    /// A byte range is outside the block.
    #[error(
        "range of {len} bytes at offset {offset} is outside RAM block `{idstr}` of {size} bytes"
    )]
    RangeOutOfBounds {
        /// The block.
        idstr: String,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Size of the block.
        size: u64,
    },
    /// A page buffer is not exactly 4096 bytes long.
    #[error("page buffer is {len} bytes long, expected 4096")]
    BadPageBuffer {
        /// The buffer length.
        len: usize,
    },
    /// Opening `/proc/self/pagemap` failed.
    #[error("could not open /proc/self/pagemap")]
    Pagemap {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `PAGEMAP_SCAN` ioctl failed.
    #[error("PAGEMAP_SCAN failed on RAM block `{idstr}`")]
    PageScan {
        /// The block.
        idstr: String,
        /// The OS error (ENOTTY means the kernel is older than 6.7).
        #[source]
        source: io::Error,
    },
    /// `lseek(SEEK_DATA/SEEK_HOLE)` on the backing file failed.
    #[error("could not find the data extents of the backing of RAM block `{idstr}`")]
    SeekData {
        /// The block.
        idstr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `userfaultfd` syscall failed.
    #[error("userfaultfd is not available")]
    UffdUnavailable {
        /// The OS error (EPERM: see vm.unprivileged_userfaultfd).
        #[source]
        source: io::Error,
    },
    /// The kernel's userfaultfd lacks features needed for write-protect dirty tracking.
    #[error("userfaultfd lacks features {missing:#x} needed for asynchronous write-protect dirty tracking")]
    UffdFeatures {
        /// The `UFFD_FEATURE_*` bits that are missing.
        missing: u64,
    },
    /// The block's memory type cannot be registered for write-protect tracking.
    #[error("RAM block `{idstr}` ({backing}) cannot be registered for userfaultfd write-protect tracking")]
    UnsupportedBacking {
        /// The block.
        idstr: String,
        /// A description of its backing.
        backing: String,
        /// The OS error from UFFDIO_REGISTER.
        #[source]
        source: io::Error,
    },
    /// Write-protecting a block failed.
    #[error("could not write-protect RAM block `{idstr}`")]
    WriteProtect {
        /// The block.
        idstr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A hypervisor's dirty log (e.g. KVM's) failed; the hypervisor's error is the source.
    #[error("the hypervisor's dirty log for RAM block `{idstr}` failed to {what}")]
    Hypervisor {
        /// The block.
        idstr: String,
        /// What was asked: "start", "sync", "stop".
        what: &'static str,
        /// The hypervisor's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The block is already being tracked by another dirty log.
    #[error("RAM block `{idstr}` is already tracked by another dirty log")]
    AlreadyTracked {
        /// The block.
        idstr: String,
    },
    /// `sync` was called before `start`.
    #[error("the dirty log has not been started")]
    NotStarted,
    /// `sync` got a different number of bitmaps than there are blocks.
    #[error("got {got} dirty bitmaps for {expected} RAM blocks")]
    BitmapCount {
        /// Number of RAM blocks.
        expected: usize,
        /// Number of bitmaps passed.
        got: usize,
    },
    /// A dirty bitmap does not have one bit per page of its block.
    #[error("dirty bitmap for RAM block `{idstr}` has {got} bits, expected {expected}")]
    BitmapLen {
        /// The block.
        idstr: String,
        /// Pages in the block.
        expected: u64,
        /// Bits in the bitmap.
        got: u64,
    },
    /// A block index is outside the guest's block list.
    #[error("there is no RAM block number {block}")]
    BlockIndex {
        /// The rejected index.
        block: usize,
    },
    /// Reading or polling the userfaultfd failed.
    #[error("could not read page faults from the userfaultfd")]
    UffdRead {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Placing a page with UFFDIO_COPY / UFFDIO_ZEROPAGE failed.
    #[error("could not place page {page} of RAM block `{idstr}`")]
    Place {
        /// The block.
        idstr: String,
        /// The page index.
        page: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The page-hash table of a postcopy `ram-verify` cannot be allocated.
    #[error("cannot allocate page hashes for {pages} pages (ram-verify in postcopy)")]
    DigestTable {
        /// Pages of the block.
        pages: u64,
    },
    /// Discarding a range of received pages failed.
    #[error("could not discard {len} bytes at offset {offset} of RAM block `{idstr}`")]
    Discard {
        /// The block.
        idstr: String,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Preallocating a block failed (no memory, or a kernel without `MADV_POPULATE_WRITE`).
    #[error("could not preallocate the {size} bytes of RAM block `{idstr}` (needs the memory now, and Linux 5.14 or later)")]
    Prealloc {
        /// The block.
        idstr: String,
        /// Its size.
        size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}
