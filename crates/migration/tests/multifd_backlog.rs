//! The multifd sender's backlog — the bytes a switchover must still wait for on the channels —
//! over a real loopback TCP channel whose peer stalls: non-zero while the peer holds the pages
//! back, zero once it has read them all.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_ram::{Backing, GuestRam, RamBlock};
use migration::ram::multifd;
use savevm::multifd::MULTIFD_PAGES;
use savevm::multifd_codec::Compression;
use transport::{ChannelReader, MigrationUri};

const PAGE: u64 = 4096;
/// Far more than the two sockets' buffers hold (a few MiB on loopback): the channel thread
/// blocks on its socket until the peer reads.
const RAM: u64 = 64 << 20;

/// Polls `cond` every 2 ms for up to 30 s (a loaded machine is slow, never this slow).
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn channel() -> (transport::ChannelWriter, ChannelReader) {
    let uri: MigrationUri = "tcp:127.0.0.1:0".parse().unwrap();
    let listener = transport::listen(&uri, &transport::NoFds).unwrap();
    let addr: MigrationUri = listener.local_description().parse().unwrap();
    let out = transport::connect(&addr, &transport::NoFds).unwrap();
    let inc = listener.accept_next().unwrap();
    (out.into_split().1, inc.into_split().0)
}

#[test]
fn backlog_counts_what_a_stalled_peer_holds_and_is_zero_once_it_drained() {
    let block = RamBlock::new("pc.ram", RAM, Backing::Anonymous).unwrap();
    // Non-zero pages (the sender does not look, but the bytes are then real data).
    block.write_range(0, &vec![0x5a; RAM as usize]).unwrap();
    let ram = Arc::new(GuestRam::new(vec![block]));
    let (mut writer, mut peer) = channel();
    multifd::send_hello(&mut writer, 0).unwrap();
    let mut sender = multifd::start_sender(vec![writer], Compression::None, false).unwrap();
    assert_eq!(sender.backlog(), 0, "nothing queued yet");
    let meter = sender.backlog_meter();
    let memory = ram.blocks()[0].memory().clone();
    let queuer = std::thread::spawn(move || {
        for page in 0..RAM / PAGE {
            sender.queue(0, "pc.ram", page * PAGE, &memory).unwrap();
        }
        sender.sync().unwrap();
        sender
    });
    // The peer reads nothing: the queuer cannot finish (64 MiB do not fit in the sockets), and
    // what the socket holds is counted — more than the meter's own queue can hold (the two
    // jobs a channel holds: one being written, one waiting).
    let queued_at_most = (2 * MULTIFD_PAGES) as u64 * PAGE;
    assert!(
        eventually(|| meter.bytes() > queued_at_most),
        "{} bytes counted",
        meter.bytes()
    );
    assert!(
        !queuer.is_finished(),
        "64 MiB went through a peer that reads nothing"
    );
    // The peer reads every byte now, until the channel ends.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match peer.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let sender = queuer.join().unwrap();
    // Every packet written; the kernel counts the socket's bytes until the peer acknowledged.
    assert!(
        eventually(|| sender.backlog() == 0),
        "{} bytes left after the peer read everything",
        sender.backlog()
    );
    let written = sender.bytes;
    drop(sender);
    assert_eq!(reader.join().unwrap(), written, "the peer got every byte");
    assert!(written > RAM, "pages and packet headers");
}
