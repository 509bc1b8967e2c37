//! Integration tests of RAM blocks, populated-page detection and dirty tracking.

use std::sync::Arc;
use std::thread;

use guest_ram::{
    Backing, Bitmap, DirtyLog, Error, FullDirtyLog, GuestRam, RamBlock, UffdDirtyLog, PAGE_SIZE,
};

const MIB: u64 = 1 << 20;

fn page_of(byte: u8) -> Vec<u8> {
    vec![byte; PAGE_SIZE as usize]
}

fn ones(bm: &Bitmap) -> Vec<u64> {
    bm.iter_ones().collect()
}

/// All backings the tests run against; the tempdir must outlive the blocks.
fn backings(dir: &tempfile::TempDir) -> Vec<Backing> {
    vec![
        Backing::Anonymous,
        Backing::Memfd,
        Backing::File {
            path: dir.path().join("ram-shared"),
            share: true,
        },
        Backing::File {
            path: dir.path().join("ram-private"),
            share: false,
        },
    ]
}

/// Starts uffd tracking, or prints a visible SKIP if the host cannot do it at all.
fn start_or_skip(log: &mut UffdDirtyLog, what: &str) -> bool {
    match log.start() {
        Ok(()) => true,
        Err(e @ (Error::UffdUnavailable { .. } | Error::UffdFeatures { .. })) => {
            testkit::print_skip(&format!("{what}: {e}"));
            false
        }
        Err(e) => panic!("{what}: start failed: {e}"),
    }
}

#[test]
fn rejects_bad_sizes_and_names() {
    assert!(matches!(
        RamBlock::new("pc.ram", 4095, Backing::Anonymous),
        Err(Error::BadSize { size: 4095 })
    ));
    assert!(matches!(
        RamBlock::new("pc.ram", 0, Backing::Anonymous),
        Err(Error::BadSize { .. })
    ));
    assert!(matches!(
        RamBlock::new("", 4096, Backing::Anonymous),
        Err(Error::BadName { .. })
    ));
}

#[test]
fn page_access_round_trips_and_checks_bounds() {
    let b = RamBlock::new("ram", MIB, Backing::Anonymous).unwrap();
    assert_eq!(b.idstr(), "ram");
    assert_eq!(b.len(), MIB);
    assert_eq!(b.pages(), 256);
    b.write_page(3, &page_of(0xab)).unwrap();
    let mut buf = [0u8; 4096];
    b.copy_page_to(3, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0xab));
    b.write_range(4096 * 10 + 100, b"hello").unwrap();
    let mut five = [0u8; 5];
    b.read_range(4096 * 10 + 100, &mut five).unwrap();
    assert_eq!(&five, b"hello");

    assert!(matches!(
        b.copy_page_to(256, &mut buf),
        Err(Error::PageOutOfRange { page: 256, .. })
    ));
    assert!(matches!(
        b.write_range(MIB - 2, b"abc"),
        Err(Error::RangeOutOfBounds { .. })
    ));
    assert!(matches!(
        b.read_range(u64::MAX, &mut five),
        Err(Error::RangeOutOfBounds { .. })
    ));
    assert!(matches!(
        b.write_page(0, &[0u8; 100]),
        Err(Error::BadPageBuffer { len: 100 })
    ));
}

#[test]
fn in_place_page_access_reads_fills_and_checks_bounds() {
    let b = RamBlock::new("ram", MIB, Backing::Anonymous).unwrap();
    b.write_page(7, &page_of(0x5a)).unwrap();
    assert_eq!(b.page(7).unwrap(), &page_of(0x5a)[..]);
    assert!(matches!(
        b.page(256),
        Err(Error::PageOutOfRange { page: 256, .. })
    ));

    // The destination reads a page straight from the stream; the page counts as a VMM write.
    b.vmm_dirty().activate();
    let mut stream: &[u8] = &page_of(0xc3);
    b.fill_page(9, |p| std::io::Read::read_exact(&mut stream, p))
        .unwrap()
        .unwrap();
    assert_eq!(b.page(9).unwrap(), &page_of(0xc3)[..]);
    let mut written = Bitmap::new(b.pages());
    assert_eq!(b.vmm_dirty().drain_into(&mut written), 1);
    assert_eq!(ones(&written), vec![9]);
    assert!(matches!(
        b.fill_page(256, |_| ()),
        Err(Error::PageOutOfRange { page: 256, .. })
    ));
}

#[test]
fn block_memory_outlives_its_block() {
    let b = RamBlock::new("ram", MIB, Backing::Memfd).unwrap();
    b.write_page(255, &page_of(0x11)).unwrap();
    let memory = Arc::clone(b.memory());
    drop(b);
    // A sender may still hold the handle after the block is gone; the mapping stays valid.
    let bytes: &[u8] = (*memory).as_ref();
    assert_eq!(bytes.len() as u64, MIB);
    assert_eq!(memory.len() as u64, MIB);
    assert!(bytes[255 * 4096..].iter().all(|&x| x == 0x11));
    let handle = thread::spawn(move || (*memory).as_ref()[..4096].iter().all(|&x| x == 0));
    assert!(handle.join().unwrap());
}

#[test]
fn zero_page_detection() {
    let b = RamBlock::new("ram", 64 * 4096, Backing::Anonymous).unwrap();
    assert!(b.is_zero_page(0).unwrap());
    // A single non-zero byte at the very end of the page.
    b.write_range(4096 + 4095, &[1]).unwrap();
    assert!(!b.is_zero_page(1).unwrap());
    // ... and at the very start.
    b.write_range(2 * 4096, &[1]).unwrap();
    assert!(!b.is_zero_page(2).unwrap());
    b.zero_page(1).unwrap();
    assert!(b.is_zero_page(1).unwrap());
    assert!(b.is_zero_page(63).unwrap());
    assert!(b.is_zero_page(64).is_err());
}

#[test]
fn zero_page_keeps_untouched_pages_unpopulated() {
    let dir = tempfile::tempdir().unwrap();
    for backing in backings(&dir) {
        let b = RamBlock::new("ram", 64 * 4096, backing.clone()).unwrap();
        for p in 0..64 {
            b.zero_page(p).unwrap();
        }
        assert_eq!(b.populated_pages().unwrap().count_ones(), 0, "{backing}");
    }
}

#[test]
fn populated_pages_reports_touched_pages_only() {
    let dir = tempfile::tempdir().unwrap();
    let written = [0u64, 7, 8, 600, 2047];
    for backing in backings(&dir) {
        let b = RamBlock::new("ram", 8 * MIB, backing.clone()).unwrap();
        assert_eq!(b.populated_pages().unwrap().count_ones(), 0, "{backing}");
        for p in written {
            b.write_page(p, &page_of(1)).unwrap();
        }
        let _ = b.digest();
        let populated = b.populated_pages().unwrap();
        // Guest RAM may be backed by huge pages (anonymous memory asks for transparent huge
        // pages, shmem and file systems allocate large folios or extents), so neighbours of
        // written pages may be reported too; untouched 2 MiB regions never are.
        assert_covers(&populated, &written, &backing);
        assert_eq!(populated.next_set(1024).filter(|&p| p < 1536), None);
        // Reading never-touched pages of private memory does not populate them (reading shmem
        // holes does allocate, so memfd is left out here).
        if backing != Backing::Memfd {
            let mut buf = [0u8; 4096];
            for p in 1024..1100 {
                b.copy_page_to(p, &mut buf).unwrap();
                assert!(b.is_zero_page(p).unwrap());
            }
            assert_eq!(b.populated_pages().unwrap(), populated, "{backing}");
        }
    }
}

#[test]
fn prealloc_populates_every_page_and_keeps_contents() {
    let dir = tempfile::tempdir().unwrap();
    for backing in backings(&dir) {
        let b = RamBlock::new("ram", 8 * MIB, backing.clone()).unwrap();
        b.write_page(5, &page_of(7)).unwrap();
        let before = b.digest();
        b.prealloc().unwrap();
        let pages = b.len() / 4096;
        assert_eq!(
            b.populated_pages().unwrap().count_ones(),
            pages,
            "{backing}"
        );
        assert_eq!(b.digest(), before, "{backing}: contents changed");
        let mut buf = [0u8; 4096];
        b.copy_page_to(5, &mut buf).unwrap();
        assert_eq!(buf.to_vec(), page_of(7), "{backing}");
    }
}

#[test]
fn populated_pages_sees_writes_through_another_mapping_of_a_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared");
    let a = RamBlock::new(
        "ram",
        MIB,
        Backing::File {
            path: path.clone(),
            share: true,
        },
    )
    .unwrap();
    // A second mapping stands in for another process (its PTEs are not ours).
    let other = RamBlock::new("ram", MIB, Backing::File { path, share: true }).unwrap();
    other.write_page(42, &page_of(9)).unwrap();
    assert_eq!(ones(&a.populated_pages().unwrap()), vec![42]);
    let mut buf = [0u8; 4096];
    a.copy_page_to(42, &mut buf).unwrap();
    assert_eq!(buf[0], 9);
}

#[test]
fn digest_is_stable_and_content_sensitive() {
    let dir = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for backing in backings(&dir) {
        let b = RamBlock::new("ram", MIB, backing).unwrap();
        let empty = b.digest();
        assert_eq!(empty, b.digest());
        b.write_range(12345, b"x").unwrap();
        let one = b.digest();
        assert_ne!(one, empty);
        assert_eq!(one, b.digest());
        digests.push((empty, one));
    }
    // Same content gives the same digest whatever the backing.
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    // The digest is BLAKE3 over the chunk hashes, each BLAKE3 over its 256 page hashes.
    let page = blake3::hash(&[0u8; 4096]);
    let pages: Vec<u8> = (0..256).flat_map(|_| *page.as_bytes()).collect();
    let chunk = blake3::hash(&pages);
    let plain = blake3::hash(chunk.as_bytes());
    assert_eq!(digests[0].0, *plain.as_bytes());
}

#[test]
fn guest_ram_lookup() {
    let ram = GuestRam::new(vec![
        RamBlock::new("pc.ram", MIB, Backing::Anonymous).unwrap(),
        RamBlock::new("vga.vram", 2 * MIB, Backing::Memfd).unwrap(),
    ]);
    assert_eq!(ram.total_size(), 3 * MIB);
    assert_eq!(ram.block_by_name("vga.vram").unwrap().pages(), 512);
    assert!(ram.block_by_name("nope").is_none());
    let bms = ram.new_bitmaps();
    assert_eq!(bms[1].len(), 512);
}

/// The core dirty-log contract on every backing.
#[test]
fn uffd_reports_exactly_the_written_pages() {
    let dir = tempfile::tempdir().unwrap();
    for backing in backings(&dir) {
        let block = RamBlock::new("ram", 8 * MIB, backing.clone()).unwrap();
        // Some pages populated before tracking starts: not dirty unless written again.
        block.write_page(1, &page_of(1)).unwrap();
        block.write_page(2000, &page_of(1)).unwrap();
        let ram = Arc::new(GuestRam::new(vec![block]));
        let mut log = UffdDirtyLog::new(ram.clone());
        if !start_or_skip(&mut log, &backing.to_string()) {
            return;
        }
        let b = ram.blocks()[0].clone();

        // Writes from another thread, through the raw mapping (like a vCPU), not the RamBlock API.
        let addr = b.host_ptr() as usize;
        thread::spawn(move || {
            for p in [1usize, 3, 4, 1500] {
                // SAFETY: the block is alive (the test holds an Arc) and the page is in range.
                unsafe { std::ptr::write_volatile((addr + p * 4096 + 8) as *mut u64, 7) };
            }
        })
        .join()
        .unwrap();

        let mut dirty = ram.new_bitmaps();
        assert_eq!(log.sync(&mut dirty).unwrap(), 4, "{backing}");
        assert_eq!(ones(&dirty[0]), vec![1, 3, 4, 1500], "{backing}");

        // No writes: nothing new.
        let mut again = ram.new_bitmaps();
        assert_eq!(log.sync(&mut again).unwrap(), 0, "{backing}");

        // Populated pages while tracking: markers on untouched pages must not count.
        assert_covers(
            &b.populated_pages().unwrap(),
            &[1, 3, 4, 1500, 2000],
            &backing,
        );

        // Writes after a sync show up next time, including a first write to a never-touched page
        // and a VMM write through the API.
        b.write_range(4 * 4096 + 17, &[5]).unwrap();
        b.write_page(2047, &page_of(3)).unwrap();
        let mut next = ram.new_bitmaps();
        assert_eq!(log.sync(&mut next).unwrap(), 2, "{backing}");
        assert_eq!(ones(&next[0]), vec![4, 2047], "{backing}");

        // OR semantics: bits already set are not counted again.
        b.write_range(4 * 4096, &[6]).unwrap();
        assert_eq!(log.sync(&mut next).unwrap(), 0, "{backing}");

        log.stop();
        // Stopping removes the write-protect markers without disturbing populated_pages.
        assert_covers(
            &b.populated_pages().unwrap(),
            &[1, 3, 4, 1500, 2000, 2047],
            &backing,
        );
        // After stop, writes work normally and the block can be tracked again.
        b.write_page(5, &page_of(1)).unwrap();
        let mut log2 = UffdDirtyLog::new(ram.clone());
        log2.start().unwrap();
        let mut d = ram.new_bitmaps();
        assert_eq!(log2.sync(&mut d).unwrap(), 0, "{backing}");
    }
}

/// Deferred arming: chunks whose every page holds data are armed on first read (or by
/// `sync`); a write before the arm is covered by the deferred set the caller must send, a
/// write after it is logged, and never-touched pages are armed at once.
#[test]
fn uffd_defers_arming_of_full_chunks_and_misses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    // Chunks of 2048 pages: 0 full, 1 with holes, 2 (the last, 1024 pages) full.
    let pages = 5120u64;
    for backing in backings(&dir) {
        let block = RamBlock::new("ram", pages * PAGE_SIZE, backing.clone()).unwrap();
        for p in (0..2048).chain(4096..pages).chain([2048, 3000]) {
            block.write_range(p * PAGE_SIZE, &[1]).unwrap();
        }
        let ram = Arc::new(GuestRam::new(vec![block]));
        let mut log = UffdDirtyLog::new(ram.clone());
        if !start_or_skip(&mut log, &backing.to_string()) {
            return;
        }
        let b = ram.blocks()[0].clone();
        b.vmm_dirty().drain_into(&mut Bitmap::new(pages));
        let mut deferred = Bitmap::new(pages);
        log.mark_deferred(0, &mut deferred);
        assert_eq!(
            ones(&deferred),
            (0..2048).chain(4096..pages).collect::<Vec<_>>(),
            "{backing}"
        );
        let addr = b.host_ptr() as usize;
        let poke = |p: u64| {
            // SAFETY: the block is alive (the test holds an Arc) and the page is in range.
            unsafe { std::ptr::write_volatile((addr + p as usize * 4096 + 8) as *mut u64, 9) };
        };
        poke(10); // deferred, before its arm: in the deferred set
        log.arm(0, 5).unwrap();
        log.arm(0, 6).unwrap(); // armed once
        poke(20); // after the arm
        poke(3500); // a hole in an armed-at-start chunk: first write seen
        poke(4100); // deferred chunk never armed: sync arms it before it looks
        let mut dirty = ram.new_bitmaps();
        log.sync(&mut dirty).unwrap();
        assert_eq!(ones(&dirty[0]), vec![20, 3500], "{backing}");
        poke(4100);
        poke(10);
        let mut next = ram.new_bitmaps();
        log.sync(&mut next).unwrap();
        assert_eq!(ones(&next[0]), vec![10, 4100], "{backing}");
        // Nothing is deferred once sync armed it all; arming again is harmless.
        let mut none = Bitmap::new(pages);
        log.mark_deferred(0, &mut none);
        assert_eq!(none.count_ones(), 0, "{backing}");
        log.arm(0, 4100).unwrap();
        log.arm(1, 0).unwrap();
        log.arm(0, u64::MAX).unwrap();
    }
}

#[test]
fn second_log_on_same_block_is_rejected() {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "ram",
        MIB,
        Backing::Anonymous,
    )
    .unwrap()]));
    let mut a = UffdDirtyLog::new(ram.clone());
    if !start_or_skip(&mut a, "double") {
        return;
    }
    let mut b = UffdDirtyLog::new(ram.clone());
    assert!(matches!(b.start(), Err(Error::AlreadyTracked { .. })));
    drop(a);
    b.start().unwrap();
}

#[test]
fn sync_checks_bitmaps() {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "ram",
        MIB,
        Backing::Anonymous,
    )
    .unwrap()]));
    let mut log = UffdDirtyLog::new(ram.clone());
    assert!(matches!(
        log.sync(&mut ram.new_bitmaps()),
        Err(Error::NotStarted)
    ));
    if !start_or_skip(&mut log, "bitmaps") {
        return;
    }
    assert!(matches!(
        log.sync(&mut []),
        Err(Error::BitmapCount {
            expected: 1,
            got: 0
        })
    ));
    assert!(matches!(
        log.sync(&mut [Bitmap::new(3)]),
        Err(Error::BitmapLen { got: 3, .. })
    ));
}

#[test]
fn many_scattered_pages_exceed_one_scan_vector() {
    // Every other page dirty: 4096 separate runs, more than one PAGEMAP_SCAN output vector.
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "ram",
        32 * MIB,
        Backing::Anonymous,
    )
    .unwrap()]));
    let mut log = UffdDirtyLog::new(ram.clone());
    if !start_or_skip(&mut log, "scattered") {
        return;
    }
    let b = &ram.blocks()[0];
    for p in (0..8192u64).step_by(2) {
        b.write_range(p * 4096, &[1]).unwrap();
    }
    b.vmm_dirty().drain_into(&mut Bitmap::new(b.pages())); // kernel log only
    let mut dirty = ram.new_bitmaps();
    assert_eq!(log.sync(&mut dirty).unwrap(), 4096);
    assert!((0..8192u64).all(|p| dirty[0].test(p) == (p % 2 == 0)));
}

#[test]
fn full_dirty_log_reports_everything() {
    let ram = Arc::new(GuestRam::new(vec![
        RamBlock::new("a", MIB, Backing::Anonymous).unwrap(),
        RamBlock::new("b", 2 * MIB, Backing::Anonymous).unwrap(),
    ]));
    let mut log = FullDirtyLog::new(ram.clone());
    let mut d = ram.new_bitmaps();
    assert!(matches!(log.sync(&mut d), Err(Error::NotStarted)));
    log.start().unwrap();
    assert_eq!(log.sync(&mut d).unwrap(), 768);
    assert_eq!(log.sync(&mut d).unwrap(), 0);
}

/// Sync cost for a 1 GiB block: printed, never asserted (see also `examples/sync_cost.rs`).
#[test]
fn sync_cost_of_one_gib_is_printed() {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        1 << 30,
        Backing::Anonymous,
    )
    .unwrap()]));
    let mut log = UffdDirtyLog::new(ram.clone());
    if !start_or_skip(&mut log, "sync cost") {
        return;
    }
    let b = &ram.blocks()[0];
    for p in (0..b.pages()).step_by(64) {
        b.write_range(p * 4096, &[1]).unwrap();
    }
    let mut d = ram.new_bitmaps();
    let t = std::time::Instant::now();
    let n = log.sync(&mut d).unwrap();
    let first = t.elapsed();
    let t = std::time::Instant::now();
    log.sync(&mut d).unwrap();
    eprintln!(
        "1 GiB sync: {n} dirty pages in {first:?}; idle re-sync {:?}",
        t.elapsed()
    );
    assert_eq!(n, b.pages() / 64);
}

#[test]
fn uffd_keeps_blocks_apart() {
    let ram = Arc::new(GuestRam::new(vec![
        RamBlock::new("pc.ram", 2 * MIB, Backing::Anonymous).unwrap(),
        RamBlock::new("vga.vram", MIB, Backing::Memfd).unwrap(),
        RamBlock::new("pc.bios", 64 * 4096, Backing::Anonymous).unwrap(),
    ]));
    let mut log = UffdDirtyLog::new(ram.clone());
    if !start_or_skip(&mut log, "blocks") {
        return;
    }
    let b = ram.blocks();
    b[0].guest_write(3 * 4096, &[1]).unwrap();
    b[1].guest_write(255 * 4096, &[1]).unwrap();
    b[1].guest_write(0, &[1]).unwrap();
    b[2].guest_write(63 * 4096 + 4095, &[1]).unwrap();
    let mut d = ram.new_bitmaps();
    assert_eq!(log.sync(&mut d).unwrap(), 4);
    assert_eq!(ones(&d[0]), vec![3]);
    assert_eq!(ones(&d[1]), vec![0, 255]);
    assert_eq!(ones(&d[2]), vec![63]);
}

/// `populated` holds every page of `written`, and nothing outside the 2 MiB regions (512
/// pages) that hold one of them.
fn assert_covers(populated: &Bitmap, written: &[u64], backing: &Backing) {
    assert!(
        written.iter().all(|&p| populated.test(p)),
        "{backing}: {:?}",
        ones(populated)
    );
    for p in ones(populated) {
        assert!(
            written.iter().any(|&w| w / 512 == p / 512),
            "{backing}: page {p} reported"
        );
    }
}

/// A shared tmpfs file (a memfd, a `/dev/shm` file) without holes is reported whole without
/// walking its page cache; one hole still shows.
#[test]
fn populated_pages_of_a_full_shmem_file_and_of_one_with_a_hole() {
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let backing = |name: &str| match &shm {
        Some(d) => Backing::File {
            path: d.path().join(name),
            share: true,
        },
        None => Backing::Memfd,
    };
    for (full, holed) in [
        (Backing::Memfd, Backing::Memfd),
        (backing("full"), backing("holed")),
    ] {
        let b = RamBlock::new("ram", 8 * MIB, full.clone()).unwrap();
        let pages = b.len() / 4096;
        b.write_range(0, &vec![3u8; (8 * MIB) as usize]).unwrap();
        assert_eq!(b.populated_pages().unwrap().count_ones(), pages, "{full}");
        // Every page but one aligned 2 MiB region written (tmpfs may use huge pages): a hole.
        let h = RamBlock::new("ram", 8 * MIB, holed.clone()).unwrap();
        let hole = 1024..1536;
        let written: Vec<u64> = (0..pages).filter(|p| !hole.contains(p)).collect();
        for &p in &written {
            h.write_page(p, &page_of(1)).unwrap();
        }
        let populated = h.populated_pages().unwrap();
        assert_eq!(populated.next_set(hole.start), Some(hole.end), "{holed}");
        assert_covers(&populated, &written, &holed);
    }
}
