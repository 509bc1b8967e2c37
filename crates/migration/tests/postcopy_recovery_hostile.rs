//! Postcopy recovery against a hostile or broken peer, live over TCP: a real paused source
//! resumes towards a scripted fake destination, and a real paused destination takes a
//! scripted fake source. Every bad answer is a typed error that sends the real side back to
//! `postcopy-paused` with the reason in `error-desc` (it can be recovered again), never a
//! panic, and the source's guest never restarts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use migration::{MigrationStatus, RunState, VmControl};
use savevm::record::postcopy::{PageRequest, RP_REQ_PAGES_ID};
use savevm::record::recovery::{
    encode_bitmap_tail, encode_block_name, read_bitmap_tail, RECV_BITMAP_END, RP_RECV_BITMAP,
    RP_RESUME_ACK,
};
use savevm::record::{read_rp, write_rp, RpMessage, MIG_CMD_POSTCOPY_RESUME, MIG_CMD_RECV_BITMAP};
use testkit::RamVm;

mod common;
use common::guest::{reader, slow_postcopy};

const WAIT: Duration = Duration::from_secs(60);
/// The test RAM: 16 MiB, 4096 pages, a 512-byte bitmap.
const WORDS: usize = 64;

/// A pair in postcopy, paused by `migrate-pause` on the source.
fn paused_pair() -> (RamVm, RamVm) {
    let (src, dst) = slow_postcopy(31);
    src.state.migrate_pause().unwrap();
    for s in [&src, &dst] {
        testkit::wait_for(WAIT, "paused", || {
            s.state.status() == MigrationStatus::PostcopyPaused
        });
    }
    (src, dst)
}

/// Waits until `side` is paused again with `text` in its error.
fn repaused_with(side: &RamVm, text: &str) {
    testkit::wait_for(WAIT, text, || {
        side.state.status() == MigrationStatus::PostcopyPaused
            && side
                .state
                .info()
                .error_desc
                .is_some_and(|e| e.contains(text))
    });
}

/// One stream command: `0x08, be16 cmd, be16 len, payload`.
fn command(cmd: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x08];
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// Reads one command from the source; returns (cmd, payload).
fn read_command(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x08, "a command");
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes([head[3], head[4]]))];
    s.read_exact(&mut payload).unwrap();
    (u16::from_be_bytes([head[1], head[2]]), payload)
}

fn rp_bitmap(s: &mut TcpStream, block: &str, tail: &[u8]) {
    let msg = RpMessage::Other {
        kind: RP_RECV_BITMAP,
        data: encode_block_name(block).unwrap(),
    };
    write_rp(s, &msg).unwrap();
    s.write_all(tail).unwrap();
}

/// The real source resumes towards a fake destination that answers its RECV_BITMAP with
/// `answer`; returns the fake's connection.
fn resume_to_fake(src: &RamVm, answer: impl FnOnce(&mut TcpStream)) -> TcpStream {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:{}", fake.local_addr().unwrap());
    src.state.resume_postcopy(uri.parse().unwrap()).unwrap();
    let (mut s, _) = fake.accept().unwrap();
    let (cmd, payload) = read_command(&mut s);
    assert_eq!(cmd, MIG_CMD_RECV_BITMAP);
    assert_eq!(payload, b"\x06pc.ram");
    answer(&mut s);
    s
}

#[test]
fn source_refuses_bad_bitmaps_and_acks_and_stays_paused() {
    let (src, dst) = paused_pair();
    dst.cancel();
    assert!(dst.finish().is_err());
    // A block the source does not have.
    let _c = resume_to_fake(&src, |s| {
        rp_bitmap(s, "nosuch", &encode_bitmap_tail(&[0; WORDS]))
    });
    repaused_with(&src, "unknown RAM block 'nosuch'");
    // The wrong size.
    let _c = resume_to_fake(&src, |s| {
        rp_bitmap(s, "pc.ram", &encode_bitmap_tail(&[0; 3]))
    });
    repaused_with(&src, "bitmap size mismatch (0x18 != 0x200)");
    // A bad end marker.
    let _c = resume_to_fake(&src, |s| {
        let mut tail = encode_bitmap_tail(&[0; WORDS]);
        let n = tail.len();
        tail[n - 1] ^= 0xff;
        rp_bitmap(s, "pc.ram", &tail)
    });
    repaused_with(&src, "end mark incorrect: 0x123456789abcd10");
    // A size no block has (refused before anything is allocated).
    let _c = resume_to_fake(&src, |s| {
        rp_bitmap(s, "pc.ram", &u64::MAX.to_be_bytes());
    });
    repaused_with(&src, "received-pages bitmap");
    // A good bitmap, then RESUME_ACK with a wrong value.
    let _c = resume_to_fake(&src, |s| {
        rp_bitmap(s, "pc.ram", &encode_bitmap_tail(&[u64::MAX; WORDS]));
        assert_eq!(read_command(s), (MIG_CMD_POSTCOPY_RESUME, Vec::new()));
        let ack = RpMessage::Other {
            kind: RP_RESUME_ACK,
            data: 2u32.to_be_bytes().to_vec(),
        };
        write_rp(s, &ack).unwrap();
    });
    repaused_with(&src, "illegal resume_ack value 2");
    // A destination that hangs up in the middle of the handshake.
    drop(resume_to_fake(&src, |_| {}));
    repaused_with(&src, "");
    assert_ne!(src.vm.run_state(), RunState::Running);
    assert_eq!(src.vm.starts(), 0);
    src.cancel();
    assert_eq!(src.wait_final(), MigrationStatus::Cancelled);
    assert!(src.finish().is_err());
    assert_eq!(src.vm.starts(), 0, "the source's guest never restarts");
}

/// The real destination takes a fake source on `migrate-recover` and gets `bytes` from it.
fn fake_source(dst: &RamVm, bytes: &[u8]) -> TcpStream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    dst.state
        .recover_postcopy(transport::Listener::from_tcp(l).unwrap())
        .unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s
}

#[test]
fn destination_answers_bitmaps_refuses_bad_commands_and_stays_paused() {
    let (src, dst) = paused_pair();
    src.cancel();
    assert!(src.finish().is_err());
    // An unknown block.
    let _c = fake_source(&dst, &command(MIG_CMD_RECV_BITMAP, b"\x06nosuch"));
    repaused_with(&dst, "nosuch");
    // A name whose length byte lies.
    let _c = fake_source(&dst, &command(MIG_CMD_RECV_BITMAP, b"\x09pc.ram"));
    repaused_with(&dst, "malformed postcopy RECV_BITMAP");
    // A good request: the received-pages bitmap, as QEMU 7.2 lays it out.
    let mut c = fake_source(&dst, &command(MIG_CMD_RECV_BITMAP, b"\x06pc.ram"));
    testkit::wait_for(WAIT, "recovering", || {
        dst.state.status() == MigrationStatus::PostcopyRecover
    });
    c.set_read_timeout(Some(WAIT)).unwrap();
    let msg = read_rp(&mut c).unwrap().unwrap();
    assert_eq!(
        msg,
        RpMessage::Other {
            kind: RP_RECV_BITMAP,
            data: b"\x06pc.ram".to_vec()
        }
    );
    let tail = read_bitmap_tail(&mut c, 4096).unwrap();
    assert_eq!(tail.words.len(), WORDS);
    assert_eq!(tail.end, RECV_BITMAP_END);
    let received: u32 = tail.words.iter().map(|w| w.count_ones()).sum();
    assert!(received > 0, "pre-copy delivered pages");
    // Garbage instead of a section: back to paused, the guest still running.
    c.write_all(&[0x42; 16]).unwrap();
    testkit::wait_for(WAIT, "paused again", || {
        dst.state.status() == MigrationStatus::PostcopyPaused
    });
    assert_eq!(dst.vm.run_state(), RunState::Running);
    dst.cancel();
    assert!(dst.finish().is_err());
    assert_eq!(dst.vm.run_state(), RunState::Paused);
}

/// After RESUME the destination acknowledges (RESUME_ACK 1), then asks again, naming the
/// block, for the pages its guest waits for: the requests in flight when the link broke are
/// gone with it.
#[test]
fn destination_acks_resume_then_asks_again_for_the_pages_it_waits_for() {
    let (src, dst) = slow_postcopy(33);
    let stop = Arc::new(AtomicBool::new(false));
    // The guest reads pages in a scattered order: it soon waits for a missing one.
    let r = reader(dst.ram.clone(), &dst.vm, stop.clone());
    src.state.migrate_pause().unwrap();
    testkit::wait_for(WAIT, "paused", || {
        dst.state.status() == MigrationStatus::PostcopyPaused
    });
    src.cancel();
    assert!(src.finish().is_err());
    let mut c = fake_source(&dst, &command(MIG_CMD_POSTCOPY_RESUME, &[]));
    c.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        read_rp(&mut c).unwrap().unwrap(),
        RpMessage::Other {
            kind: RP_RESUME_ACK,
            data: vec![0, 0, 0, 1]
        }
    );
    assert_eq!(dst.state.status(), MigrationStatus::PostcopyActive);
    let Some(RpMessage::Other { kind, data }) = read_rp(&mut c).unwrap() else {
        panic!("a page request")
    };
    let req = PageRequest::decode(kind, &data).unwrap();
    assert_eq!(kind, RP_REQ_PAGES_ID);
    assert_eq!(req.block.as_deref(), Some("pc.ram"));
    assert_eq!(req.len, 4096);
    drop(c);
    testkit::wait_for(WAIT, "paused again", || {
        dst.state.status() == MigrationStatus::PostcopyPaused
    });
    dst.cancel();
    assert!(dst.finish().is_err());
    stop.store(true, Ordering::SeqCst);
    r.join().unwrap();
}
