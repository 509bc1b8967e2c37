//! Prints what `RamBlock::digest` costs on a 512 MiB block with 256 MiB of data, with and
//! without dirty tracking armed (a figure, not a test).

use std::sync::Arc;
use std::time::Instant;

use guest_ram::{Backing, DirtyLog, GuestRam, RamBlock, UffdDirtyLog};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ram = Arc::new(GuestRam::new(vec![RamBlock::new(
        "ram",
        512 << 20,
        Backing::Anonymous,
    )?]));
    let b = ram.blocks()[0].clone();
    let data = vec![0x5au8; 1 << 20];
    for off in (0..256u64 << 20).step_by(1 << 20) {
        b.write_range(off, &data)?;
    }
    let t = Instant::now();
    let pop = b.populated_pages()?;
    println!(
        "populated_pages: {:?} ({} pages)",
        t.elapsed(),
        pop.count_ones()
    );
    let t = Instant::now();
    b.digest();
    println!("digest, untracked: {:?}", t.elapsed());
    let mut log = UffdDirtyLog::new(ram.clone());
    log.start()?;
    let t = Instant::now();
    let pop = b.populated_pages()?;
    println!(
        "populated_pages, tracked: {:?} ({} pages)",
        t.elapsed(),
        pop.count_ones()
    );
    let t = Instant::now();
    b.digest();
    println!("digest, tracked: {:?}", t.elapsed());
    Ok(())
}
