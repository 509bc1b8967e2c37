//! Prints the cost of a uffd-wp dirty-log sync over a 1 GiB anonymous block with 64 MiB dirtied.
//!
//! `cargo run --release -p guest-ram --example sync_cost`

use std::sync::Arc;
use std::time::Instant;

use guest_ram::{Backing, DirtyLog, GuestRam, RamBlock, UffdDirtyLog, PAGE_SIZE};

fn main() -> Result<(), guest_ram::Error> {
    const GIB: u64 = 1 << 30;
    const DIRTY: u64 = 64 << 20;
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "pc.ram",
        GIB,
        Backing::Anonymous,
    )?]));
    let block = ram.blocks()[0].clone();
    let mut log = UffdDirtyLog::new(ram.clone());
    let t = Instant::now();
    log.start()?;
    println!("start (register + write-protect 1 GiB): {:?}", t.elapsed());

    for (name, stride) in [("contiguous", 1u64), ("every 16th page", 16)] {
        let pages = DIRTY / PAGE_SIZE;
        let t = Instant::now();
        for i in 0..pages {
            let p = (i * stride) % block.pages();
            block.guest_write(p * PAGE_SIZE, &[1])?;
        }
        let write = t.elapsed();
        let mut dirty = ram.new_bitmaps();
        let t = Instant::now();
        let n = log.sync(&mut dirty)?;
        let sync = t.elapsed();
        let t = Instant::now();
        let idle = log.sync(&mut ram.new_bitmaps())?;
        println!(
            "{name}: dirtied {n} pages (64 MiB) in {write:?}; sync {sync:?}; idle sync ({idle} pages) {:?}",
            t.elapsed()
        );
    }
    log.stop();
    Ok(())
}
