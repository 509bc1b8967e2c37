use std::io::{Read, Write};
use std::sync::Arc;

use savevm::qemu_file::{QemuFileReader, QemuFileWriter, SharedBuffer};
use savevm::Error;

use crate::{bytes_of, reader};

#[test]
fn primitives_round_trip() {
    let bytes = bytes_of(|w| {
        w.put_u8(0xab);
        w.put_be16(0x1234);
        w.put_be32(0xdead_beef);
        w.put_be64(0x0102_0304_0506_0708);
        w.put_be_i64(-2);
        w.put_counted_string("pc.ram");
        w.put_buffer(&[9, 8, 7]);
    });
    assert_eq!(&bytes[..7], &[0xab, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(bytes.len(), 1 + 2 + 4 + 8 + 8 + 7 + 3);
    let mut r = reader(&bytes);
    assert_eq!(r.get_u8().unwrap(), 0xab);
    assert_eq!(r.get_be16().unwrap(), 0x1234);
    assert_eq!(r.get_be32().unwrap(), 0xdead_beef);
    assert_eq!(r.get_be64().unwrap(), 0x0102_0304_0506_0708);
    assert_eq!(r.get_be_i64().unwrap(), -2);
    assert_eq!(r.get_counted_string().unwrap(), "pc.ram");
    let mut b = [0u8; 3];
    r.get_buffer(&mut b).unwrap();
    assert_eq!(b, [9, 8, 7]);
    assert_eq!(r.bytes_read(), bytes.len() as u64);
    assert!(r.is_eof().unwrap());
}

#[test]
fn total_transferred_counts_buffered_bytes() {
    let buf = SharedBuffer::new();
    let mut w = QemuFileWriter::new(Box::new(buf.clone()));
    w.put_be64(1);
    w.put_counted_string("abc");
    assert_eq!(w.total_transferred(), 12);
    assert!(buf.is_empty(), "small puts stay buffered until flush");
    w.flush().unwrap();
    assert_eq!(buf.len(), 12);
    assert_eq!(w.total_transferred(), 12);
}

#[test]
fn large_buffers_keep_order_with_small_capacity() {
    let buf = SharedBuffer::new();
    let mut w = QemuFileWriter::with_capacity(Box::new(buf.clone()), 64);
    let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    w.put_u8(1);
    w.put_buffer(&big);
    w.put_u8(2);
    for _ in 0..100 {
        w.put_be32(0x0a0b_0c0d);
    }
    w.flush().unwrap();
    let out = buf.contents();
    assert_eq!(out[0], 1);
    assert_eq!(&out[1..1001], &big[..]);
    assert_eq!(out[1001], 2);
    assert_eq!(out.len(), 1002 + 400);
    assert_eq!(w.total_transferred(), out.len() as u64);
}

#[test]
fn external_bytes_keep_stream_order_and_are_held_until_written() {
    let buf = SharedBuffer::new();
    let mut w = QemuFileWriter::with_capacity(Box::new(buf.clone()), 4096);
    let a: Arc<Vec<u8>> = Arc::new((0..3000u32).map(|i| i as u8).collect());
    let b: Arc<Vec<u8>> = Arc::new(vec![0xee; 100]);
    w.put_u8(1);
    w.put_external(&a, 0..1000);
    w.put_external(&a, 2000..3000);
    w.put_be16(0x0203);
    w.put_external(&b, 10..20);
    // Queued, not copied: the writer holds one reference per run of one source.
    assert_eq!(Arc::strong_count(&a), 2);
    assert_eq!(Arc::strong_count(&b), 2);
    assert_eq!(w.total_transferred(), 1 + 1000 + 1000 + 2 + 10);
    drop(b);
    w.put_external(&a, 1000..2000);
    w.flush().unwrap();
    assert_eq!(Arc::strong_count(&a), 1, "written sources are released");
    let out = buf.contents();
    let mut want = vec![1u8];
    want.extend_from_slice(&a[0..1000]);
    want.extend_from_slice(&a[2000..3000]);
    want.extend_from_slice(&[2, 3]);
    want.extend_from_slice(&[0xee; 10]);
    want.extend_from_slice(&a[1000..2000]);
    assert_eq!(out, want);
    assert_eq!(w.rate_limit_used(), want.len() as u64);
}

#[test]
fn external_range_outside_its_source_latches_error() {
    let buf = SharedBuffer::new();
    let mut w = QemuFileWriter::new(Box::new(buf.clone()));
    let a = Arc::new([7u8; 16]);
    w.put_external(&a, 8..17);
    assert!(matches!(
        w.flush(),
        Err(Error::ExternalRange {
            start: 8,
            end: 17,
            available: 16
        })
    ));
    assert!(buf.is_empty());
    assert_eq!(Arc::strong_count(&a), 1);
}

#[test]
fn long_counted_string_latches_error() {
    let buf = SharedBuffer::new();
    let mut w = QemuFileWriter::new(Box::new(buf.clone()));
    w.put_u8(1);
    w.put_counted_string(&"x".repeat(256));
    assert!(matches!(w.error(), Some(Error::StringTooLong { len: 256 })));
    w.put_u8(2);
    assert!(w.is_rate_limited(), "an error counts as rate limited");
    assert!(matches!(w.flush(), Err(Error::StringTooLong { .. })));
    assert!(buf.is_empty(), "nothing is written after an error");
    // The first error wins.
    w.set_error(Error::ObsoleteVersion);
    assert!(matches!(w.error(), Some(Error::StringTooLong { .. })));
}

struct FailingWriter;
impl Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "peer gone",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn io_errors_latch_and_are_clonable() {
    let mut w = QemuFileWriter::with_capacity(Box::new(FailingWriter), 64);
    for _ in 0..20 {
        w.put_be64(7);
    }
    let e = w.error().expect("error latched on buffer overflow");
    match &e {
        Error::Io(io) => assert_eq!(io.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(w.flush(), Err(Error::Io(_))));
}

#[test]
fn rate_limit_window() {
    let mut w = QemuFileWriter::new(Box::new(std::io::sink()));
    assert!(!w.is_rate_limited());
    w.put_buffer(&[0u8; 1000]);
    assert!(!w.is_rate_limited(), "0 means unlimited");
    w.set_rate_limit(100);
    assert!(w.is_rate_limited());
    w.reset_rate_limit();
    assert_eq!(w.rate_limit_used(), 0);
    w.put_buffer(&[0u8; 100]);
    assert!(!w.is_rate_limited(), "used == max is not limited");
    w.put_u8(0);
    assert!(w.is_rate_limited());
    assert_eq!(w.rate_limit_used(), 101);
    // Large direct writes count too.
    let mut w = QemuFileWriter::with_capacity(Box::new(std::io::sink()), 64);
    w.set_rate_limit(10);
    w.put_buffer(&[0u8; 4096]);
    assert_eq!(w.rate_limit_used(), 4096);
    assert!(w.is_rate_limited());
}

#[test]
fn into_inner_flushes() {
    let buf = SharedBuffer::new();
    let mut w = QemuFileWriter::new(Box::new(buf.clone()));
    w.put_be32(5);
    let _inner = w.into_inner();
    assert_eq!(buf.contents(), vec![0, 0, 0, 5]);
}

/// A reader that hands out one byte per call.
struct Trickle(Vec<u8>, usize);
impl Read for Trickle {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.1 >= self.0.len() || out.is_empty() {
            return Ok(0);
        }
        out[0] = self.0[self.1];
        self.1 += 1;
        Ok(1)
    }
}

#[test]
fn reader_handles_short_reads_and_large_buffers() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 3) as u8).collect();
    let mut r = QemuFileReader::with_capacity(Box::new(Trickle(data.clone(), 0)), 512);
    assert_eq!(
        r.get_be16().unwrap(),
        u16::from_be_bytes([data[0], data[1]])
    );
    let mut big = vec![0u8; 4000];
    r.get_buffer(&mut big).unwrap();
    assert_eq!(&big[..], &data[2..4002]);
    assert_eq!(r.bytes_read(), 4002);
    assert_eq!(r.peek(3).unwrap(), &data[4002..4005]);
    r.skip(990).unwrap();
    assert_eq!(r.bytes_read(), 4992);
    let mut tail = [0u8; 8];
    r.get_buffer(&mut tail).unwrap();
    assert_eq!(&tail, &data[4992..]);
    assert!(r.is_eof().unwrap());
}

#[test]
fn short_read_reports_offset_and_latches() {
    let mut r = reader(&[1, 2, 3]);
    assert_eq!(r.get_u8().unwrap(), 1);
    match r.get_be32() {
        Err(Error::UnexpectedEof { offset }) => assert_eq!(offset, 3),
        other => panic!("unexpected {other:?}"),
    }
    // Latched: even a one-byte read that could succeed fails now.
    assert!(matches!(r.get_u8(), Err(Error::UnexpectedEof { .. })));
    assert!(r.is_eof().is_err());
}

#[test]
fn peek_does_not_consume_or_latch() {
    let mut r = reader(&[5, 6]);
    assert_eq!(r.peek_u8().unwrap(), 5);
    assert!(matches!(r.peek(3), Err(Error::UnexpectedEof { .. })));
    assert_eq!(r.peek(2).unwrap(), &[5, 6]);
    assert!(matches!(r.peek(1 << 30), Err(Error::PeekTooLarge { .. })));
    assert_eq!(r.get_be16().unwrap(), 0x0506);
    assert!(r.is_eof().unwrap());
    assert!(matches!(
        r.peek_u8(),
        Err(Error::UnexpectedEof { offset: 2 })
    ));
}

#[test]
fn counted_string_errors() {
    let mut r = reader(&[2, 0xff, 0xfe]);
    assert!(matches!(
        r.get_counted_string(),
        Err(Error::InvalidUtf8 { offset: 0 })
    ));
    let mut r = reader(&[5, b'a']);
    assert!(matches!(
        r.get_counted_string(),
        Err(Error::UnexpectedEof { .. })
    ));
    let mut r = reader(&[]);
    assert!(matches!(r.skip(1), Err(Error::UnexpectedEof { offset: 0 })));
}

#[test]
fn shared_buffer_is_shared() {
    let buf = SharedBuffer::new();
    let mut c = buf.clone();
    c.write_all(b"xy").unwrap();
    assert_eq!(buf.take(), b"xy");
    assert!(buf.is_empty());
}

#[test]
fn types_cross_threads() {
    fn send<T: Send>() {}
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send::<QemuFileWriter>();
    send::<QemuFileReader>();
    send_sync_static::<Error>();
    send_sync_static::<savevm::vmstate::VmStateDescription>();
    send_sync_static::<savevm::vmstate::VmStateValue>();
}
