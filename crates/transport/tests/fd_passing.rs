//! Descriptors travelling with a migration stream's first bytes (`FdSlot`, used by the
//! `x-local-handover` capability): only unix sockets offer a slot, the descriptors arrive with
//! the bytes they were attached to, and the stream itself is unchanged.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use transport::{connect, listen, MigrationUri, NoFds};

fn uri(s: &str) -> MigrationUri {
    s.parse().unwrap()
}

#[test]
fn a_unix_channel_carries_descriptors_with_its_first_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let u = uri(&format!("unix:{}", dir.path().join("m.sock").display()));
    let listener = listen(&u, &NoFds).unwrap();
    let (_, mut writer) = connect(&u, &NoFds).unwrap().into_split();
    let (mut reader, _) = listener.accept_next().unwrap().into_split();

    let mut shared = tempfile::tempfile().unwrap();
    shared.write_all(b"guest memory").unwrap();
    let slot = writer.fd_slot().expect("a unix socket offers a slot");
    slot.attach(vec![OwnedFd::from(shared.try_clone().unwrap())]);
    writer.write_all(b"QEVM and the rest").unwrap();
    writer.write_all(b" of the stream").unwrap();
    drop(writer);

    let mut fds = Vec::new();
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        got += reader.read_with_fds(&mut head[got..], &mut fds).unwrap();
    }
    assert_eq!(&head, b"QEVM");
    assert_eq!(fds.len(), 1, "the descriptor came with the first bytes");
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, " and the rest of the stream");

    // The received descriptor is the same open file.
    let mut received = std::fs::File::from(fds.pop().unwrap());
    received.seek(SeekFrom::Start(0)).unwrap();
    let mut text = String::new();
    received.read_to_string(&mut text).unwrap();
    assert_eq!(text, "guest memory");
}

#[test]
fn tcp_channels_offer_no_slot() {
    let listener = listen(&uri("tcp:127.0.0.1:0"), &NoFds).unwrap();
    let desc = listener.local_description();
    let (_, writer) = connect(&uri(&desc), &NoFds).unwrap().into_split();
    assert!(writer.fd_slot().is_none());
}

#[test]
fn descriptors_sent_to_a_plain_reader_are_not_kept() {
    // A reader that does not ask for descriptors (a destination without handover reading past
    // the first bytes) gets the bytes; the kernel drops the descriptors.
    let dir = tempfile::tempdir().unwrap();
    let u = uri(&format!("unix:{}", dir.path().join("m.sock").display()));
    let listener = listen(&u, &NoFds).unwrap();
    let (_, mut writer) = connect(&u, &NoFds).unwrap().into_split();
    let (mut reader, _) = listener.accept_next().unwrap().into_split();
    let f = tempfile::tempfile().unwrap();
    writer.fd_slot().unwrap().attach(vec![OwnedFd::from(f)]);
    writer.write_all(b"QEVM").unwrap();
    drop(writer);
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"QEVM");
}
