//! Tests of the software guest.

use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use guest_ram::{
    Backing, DirtyLog, Error as RamError, GuestRam, RamBlock, UffdDirtyLog, PAGE_SIZE,
};
use vmm::soft::{
    fill_initial, word_for, Error, FillPattern, Pattern, SoftCpuState, SoftGuest, WorkloadConfig,
    WORD_OFFSETS,
};

const MIB: u64 = 1 << 20;

fn ram(size: u64) -> Arc<GuestRam> {
    Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        size,
        Backing::Anonymous,
    )
    .unwrap()]))
}

fn cfg(vcpus: usize, working_set: u64) -> WorkloadConfig {
    WorkloadConfig {
        vcpus,
        working_set,
        seed: 42,
        ..WorkloadConfig::default()
    }
}

/// Polls `f` until true; panics after a very generous 20 s (a liveness check, not a timing one).
#[track_caller]
fn wait_until(f: impl FnMut() -> bool) {
    testkit::wait_for(Duration::from_secs(20), "the guest's writes", f);
}

fn read_u64(ram: &GuestRam, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    ram.blocks()[0].read_range(offset, &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn pause_quiesces_and_resume_continues() {
    let ram = ram(8 * MIB);
    let g = SoftGuest::start(ram.clone(), cfg(2, 4 * MIB)).unwrap();
    assert!(g.is_running());
    wait_until(|| g.writes().iter().all(|&w| w > 10));
    g.pause();
    assert!(!g.is_running());
    let writes = g.total_writes();
    let d1 = ram.blocks()[0].digest();
    sleep(Duration::from_millis(50));
    assert_eq!(ram.blocks()[0].digest(), d1);
    assert_eq!(g.total_writes(), writes);

    g.resume();
    assert!(g.is_running());
    wait_until(|| g.total_writes() > writes + 100);
    g.pause();
    assert_ne!(ram.blocks()[0].digest(), d1);
    g.stop();
}

#[test]
fn writes_stay_in_the_working_set_and_a_paused_guest_is_fully_synced() {
    let ram = ram(8 * MIB);
    let mut log = UffdDirtyLog::new(ram.clone());
    match log.start() {
        Ok(()) => {}
        Err(e @ (RamError::UffdUnavailable { .. } | RamError::UffdFeatures { .. })) => {
            testkit::print_skip(&format!("{e}"));
            return;
        }
        Err(e) => panic!("{e}"),
    }
    let c = WorkloadConfig {
        offset: MIB,
        pattern: Pattern::Random,
        ..cfg(3, 2 * MIB)
    };
    let g = SoftGuest::start(ram.clone(), c).unwrap();
    wait_until(|| g.total_writes() > 3000);
    g.pause();
    let mut dirty = ram.new_bitmaps();
    log.sync(&mut dirty).unwrap();
    // Nothing is still being written once pause() returned.
    let mut again = ram.new_bitmaps();
    assert_eq!(log.sync(&mut again).unwrap(), 0);
    let block = &ram.blocks()[0];
    let populated = block.populated_pages().unwrap();
    // Every page that holds data was written by the guest, lies in the working set and is dirty.
    assert!(populated.count_ones() > 0);
    for p in populated.iter_ones() {
        assert!((256..768).contains(&p), "page {p} outside the working set");
        assert!(dirty[0].test(p), "page {p} not reported dirty");
    }
    assert_eq!(dirty[0].count_ones(), populated.count_ones());
}

#[test]
fn start_from_continues_the_write_sequence() {
    let src = ram(4 * MIB);
    let c = WorkloadConfig {
        write_rate: Some(50 * PAGE_SIZE),
        ..cfg(2, 2 * MIB)
    };
    let g = SoftGuest::start(src.clone(), c.clone()).unwrap();
    wait_until(|| g.writes().iter().all(|&w| w >= 2));
    g.pause();
    let saved = g.save_state().unwrap();
    assert_eq!(saved.len(), 2);
    assert_eq!(
        saved.iter().map(|s| s.generation).collect::<Vec<_>>(),
        g.generations()
    );
    g.stop();

    // "Migrate" the RAM and continue on a destination.
    let dst = ram(4 * MIB);
    let mut buf = vec![0u8; (4 * MIB) as usize];
    src.blocks()[0].read_range(0, &mut buf).unwrap();
    dst.blocks()[0].write_range(0, &buf).unwrap();
    let d = SoftGuest::start_paused_from(dst.clone(), c.clone(), saved.clone()).unwrap();
    assert!(!d.is_running());
    assert_eq!(d.total_writes(), 0);
    d.resume();
    wait_until(|| {
        d.generations()
            .iter()
            .zip(&saved)
            .all(|(&g, s)| g >= s.generation + 3)
    });
    d.pause();
    let now = d.save_state().unwrap();
    for (v, (before, after)) in saved.iter().zip(&now).enumerate() {
        assert!(after.generation > before.generation);
        assert_eq!(
            d.writes()[v],
            after.generation - before.generation,
            "generation continues from the saved counter"
        );
        // Replay the sequence the source would have produced and check the destination's RAM.
        let mut st = *before;
        let slice = c.slice_of(v);
        let pages = slice.end - slice.start;
        let mut expect = std::collections::HashMap::new();
        while st.generation < after.generation {
            let (idx, w) = st.step(false, pages, c.seed);
            expect.insert(slice.start + idx, w);
        }
        assert_eq!(st, *after);
        for (page, w) in expect {
            for (k, off) in WORD_OFFSETS.iter().enumerate() {
                assert_eq!(
                    read_u64(&dst, page * PAGE_SIZE + off),
                    w.rotate_left(16 * k as u32)
                );
            }
        }
    }
}

#[test]
fn write_rate_is_an_upper_bound() {
    let ram = ram(4 * MIB);
    let rate_pages = 40u64;
    let c = WorkloadConfig {
        write_rate: Some(rate_pages * PAGE_SIZE),
        ..cfg(1, 2 * MIB)
    };
    let t = Instant::now();
    let g = SoftGuest::start(ram, c).unwrap();
    sleep(Duration::from_millis(300));
    g.pause();
    let elapsed = t.elapsed().as_secs_f64();
    let writes = g.total_writes();
    eprintln!("{writes} writes in {elapsed:.3} s at {rate_pages} pages/s");
    // The pacer never runs ahead of the schedule (the first write is free).
    assert!(writes as f64 <= 1.0 + elapsed * rate_pages as f64);
}

#[test]
fn first_write_of_each_vcpu_is_deterministic() {
    let ram = ram(4 * MIB);
    let c = WorkloadConfig {
        write_rate: Some(PAGE_SIZE), // one page per second: the first write is immediate
        ..cfg(2, 2 * MIB)
    };
    let g = SoftGuest::start(ram.clone(), c.clone()).unwrap();
    wait_until(|| g.writes().iter().all(|&w| w >= 1));
    g.pause();
    for v in 0..2 {
        let page = c.slice_of(v).start;
        assert_eq!(read_u64(&ram, page * PAGE_SIZE), word_for(42, v as u64, 0));
    }
}

#[test]
fn save_state_requires_pause() {
    let ram = ram(4 * MIB);
    let g = SoftGuest::start(ram, cfg(1, MIB)).unwrap();
    assert!(matches!(g.save_state(), Err(Error::NotPaused)));
    g.pause();
    assert!(g.save_state().is_ok());
    g.resume();
    assert!(matches!(g.save_state(), Err(Error::NotPaused)));
}

#[test]
fn bad_configurations_are_rejected() {
    let ram = ram(4 * MIB);
    let bad = |c: WorkloadConfig| SoftGuest::start(ram.clone(), c).unwrap_err();
    assert!(matches!(bad(cfg(0, MIB)), Error::NoVcpus));
    assert!(matches!(bad(cfg(1, 8 * MIB)), Error::BadWorkingSet { .. }));
    assert!(matches!(bad(cfg(1, 100)), Error::BadWorkingSet { .. }));
    assert!(matches!(
        bad(cfg(3, 2 * PAGE_SIZE)),
        Error::BadWorkingSet { .. }
    ));
    assert!(matches!(
        bad(WorkloadConfig {
            offset: 3 * MIB + 4096,
            ..cfg(1, MIB)
        }),
        Error::BadWorkingSet { .. }
    ));
    assert!(matches!(
        bad(WorkloadConfig {
            block: 1,
            ..cfg(1, MIB)
        }),
        Error::NoSuchBlock {
            block: 1,
            blocks: 1
        }
    ));
    assert!(matches!(
        bad(WorkloadConfig {
            write_rate: Some(0),
            ..cfg(1, MIB)
        }),
        Error::ZeroWriteRate
    ));

    let c = cfg(2, MIB);
    let good = vec![SoftCpuState::initial(1, 0), SoftCpuState::initial(1, 1)];
    let err = |states: Vec<SoftCpuState>| {
        SoftGuest::start_from(ram.clone(), c.clone(), states).unwrap_err()
    };
    assert!(matches!(
        err(good[..1].to_vec()),
        Error::StateMismatch { .. }
    ));
    assert!(matches!(
        err(vec![good[1], good[0]]),
        Error::StateMismatch { .. }
    ));
    let mut far = good.clone();
    far[0].position = 128; // slice has 128 pages
    assert!(matches!(err(far), Error::StateMismatch { .. }));
    SoftGuest::start_from(ram.clone(), c, good).unwrap().stop();
}

#[test]
fn fill_initial_leaves_one_page_in_four_zero() {
    let ram = ram(4 * MIB);
    fill_initial(&ram, 0, MIB, 7, FillPattern::Random).unwrap();
    let b = &ram.blocks()[0];
    let populated = b.populated_pages().unwrap();
    for p in 0..256u64 {
        // Pages p % 8 == 3 are never written; with huge pages they may still be populated.
        if p % 8 != 3 {
            assert!(populated.test(p), "page {p}");
        }
        assert_eq!(b.is_zero_page(p).unwrap(), p % 4 == 3, "page {p}");
    }
    // Nothing beyond the 2 MiB region that holds the filled MiB.
    assert_eq!(populated.next_set(512), None);
    let d = b.digest();
    let other = self::ram(4 * MIB);
    fill_initial(&other, 0, MIB, 7, FillPattern::Random).unwrap();
    assert_eq!(other.blocks()[0].digest(), d);
    fill_initial(&other, 0, MIB, 8, FillPattern::Random).unwrap();
    assert_ne!(other.blocks()[0].digest(), d);
    assert!(fill_initial(&ram, 0, 5 * MIB, 7, FillPattern::Random).is_err());
    assert!(matches!(
        fill_initial(&ram, 2, MIB, 7, FillPattern::Random),
        Err(Error::NoSuchBlock { .. })
    ));
}

#[test]
fn text_fill_is_words_and_zero_pages() {
    let ram = ram(4 * MIB);
    fill_initial(&ram, 0, MIB, 7, FillPattern::Text).unwrap();
    let b = &ram.blocks()[0];
    let mut page = vec![0u8; 4096];
    for p in 0..256u64 {
        assert_eq!(b.is_zero_page(p).unwrap(), p % 4 == 3, "page {p}");
        if p % 4 != 3 {
            b.copy_page_to(p, &mut page).unwrap();
            assert!(page.iter().all(|&c| c == b' ' || c.is_ascii_lowercase()));
            // Words of 2..=10 letters: a space at least every 11 bytes.
            assert!(page.windows(11).all(|w| w.contains(&b' ')), "page {p}");
        }
    }
    let d = b.digest();
    let random = self::ram(4 * MIB);
    fill_initial(&random, 0, MIB, 7, FillPattern::Random).unwrap();
    assert_ne!(random.blocks()[0].digest(), d);
}

/// A miniature pre-copy migration: send populated pages, then repeatedly sync the dirty log and
/// resend dirty pages while the guest runs, then pause and send the rest. Under concurrent vCPU
/// writes no dirty page may be lost: the copy must end up identical.
#[test]
fn precopy_with_uffd_log_loses_no_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = Backing::File {
        path: dir.path().join("ram"),
        share: true,
    };
    for backing in [Backing::Anonymous, Backing::Memfd, file] {
        let src = Arc::new(GuestRam::new(vec![RamBlock::new(
            "pc.ram",
            16 * MIB,
            backing.clone(),
        )
        .unwrap()]));
        let dst = ram(16 * MIB);
        fill_initial(&src, 0, 4 * MIB, 3, FillPattern::Random).unwrap();
        let g = SoftGuest::start(
            src.clone(),
            WorkloadConfig {
                pattern: Pattern::Random,
                offset: 2 * MIB,
                ..cfg(2, 8 * MIB)
            },
        )
        .unwrap();
        wait_until(|| g.total_writes() > 1000);
        let mut log = UffdDirtyLog::new(src.clone());
        match log.start() {
            Ok(()) => {}
            Err(e @ (RamError::UffdUnavailable { .. } | RamError::UffdFeatures { .. })) => {
                testkit::print_skip(&format!("{e}"));
                return;
            }
            Err(e) => panic!("{e}"),
        }
        let (s, d) = (&src.blocks()[0], &dst.blocks()[0]);
        let mut page = [0u8; 4096];
        let mut send = |bm: &guest_ram::Bitmap| {
            for p in bm.iter_ones() {
                s.copy_page_to(p, &mut page).unwrap();
                d.write_page(p, &page).unwrap();
            }
        };
        send(&s.populated_pages().unwrap());
        for _ in 0..5 {
            let before = g.total_writes();
            wait_until(|| g.total_writes() > before + 1000);
            let mut dirty = src.new_bitmaps();
            log.sync(&mut dirty).unwrap();
            send(&dirty[0]);
        }
        g.pause();
        let mut dirty = src.new_bitmaps();
        log.sync(&mut dirty).unwrap();
        send(&dirty[0]);
        assert!(g.total_writes() > 0);
        assert_eq!(d.digest(), s.digest(), "{backing}");
    }
}
