//! Hostile postcopy input to the destination's real loader (`incoming::load_stream`): commands
//! out of order, wrong page sizes, unknown blocks, ranges outside RAM, malformed payloads, a
//! package announcing 4 GiB. Each is a typed error, none a panic or a huge allocation.

use std::sync::Arc;

use migration::incoming::{load_stream, ReturnPath};
use migration::postcopy::PostcopyError;
use migration::{Capability, IncomingSession, MigrationError, Runtime, Settings};
use savevm::qemu_file::{QemuFileWriter, SharedBuffer};
use savevm::record::postcopy::{Advise, Discard};
use savevm::record::{self, Configuration};
use testkit::{ram_vm, MACHINE};

const PAGE: u64 = 4096;
const RAM: u64 = 4 << 20;

/// Header, configuration, then `body` writes commands.
fn stream(body: impl FnOnce(&mut QemuFileWriter)) -> Vec<u8> {
    let buf = SharedBuffer::new();
    let mut f = QemuFileWriter::new(Box::new(buf.clone()));
    record::write_header(&mut f);
    Configuration {
        machine: MACHINE.into(),
        ..Default::default()
    }
    .write_to(&mut f);
    body(&mut f);
    f.flush().unwrap();
    buf.take()
}

fn advise(f: &mut QemuFileWriter, tps: u64) {
    let a = Advise {
        page_size_summary: PAGE,
        target_page_size: tps,
    };
    record::write_command(f, record::MIG_CMD_POSTCOPY_ADVISE, &a.encode());
}

fn discard(f: &mut QemuFileWriter, block: &str, ranges: Vec<(u64, u64)>) {
    let d = Discard {
        block: block.into(),
        ranges,
    };
    record::write_command(
        f,
        record::MIG_CMD_POSTCOPY_RAM_DISCARD,
        &d.encode().unwrap(),
    );
}

/// Loads `bytes` into a fresh 4 MiB VM with `postcopy-ram` on (or off).
fn load(bytes: Vec<u8>, postcopy: bool) -> MigrationError {
    let vm = ram_vm(RAM, false);
    let mut settings = Settings::default();
    settings.caps.set(Capability::PostcopyRam, postcopy);
    let runtime = Arc::new(Runtime::new(settings.clone()));
    let mut s = IncomingSession::new(runtime, settings, Vec::new());
    let mut rp = ReturnPath::new(None);
    vm.with_registry(|reg| {
        let r = load_stream(
            Box::new(std::io::Cursor::new(bytes)),
            reg,
            MACHINE,
            &mut rp,
            &mut s,
        );
        for e in reg.entries_mut() {
            if let migration::registry::EntryKind::Live(h) = &mut e.kind {
                h.load_cleanup(true);
            }
        }
        r.expect_err("hostile stream loaded")
    })
}

fn postcopy_err(e: MigrationError) -> PostcopyError {
    match e {
        MigrationError::Postcopy(p) => p,
        other => panic!("not a postcopy error: {}", other.report()),
    }
}

#[test]
fn commands_out_of_order() {
    let e = load(stream(|f| discard(f, "pc.ram", vec![(0, PAGE)])), true);
    assert!(matches!(postcopy_err(e), PostcopyError::OutOfOrder { .. }));
    let e = load(
        stream(|f| record::write_command(f, record::MIG_CMD_POSTCOPY_LISTEN, &[])),
        true,
    );
    assert!(matches!(postcopy_err(e), PostcopyError::OutOfOrder { .. }));
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            record::write_command(f, record::MIG_CMD_POSTCOPY_RUN, &[]);
        }),
        true,
    );
    assert!(matches!(postcopy_err(e), PostcopyError::OutOfOrder { .. }));
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            advise(f, PAGE);
        }),
        true,
    );
    assert!(matches!(postcopy_err(e), PostcopyError::OutOfOrder { .. }));
}

#[test]
fn advise_is_checked() {
    let e = load(stream(|f| advise(f, 8192)), true);
    assert!(matches!(
        postcopy_err(e),
        PostcopyError::TargetPageSize { .. }
    ));
    let e = load(stream(|f| advise(f, PAGE)), false);
    assert!(matches!(postcopy_err(e), PostcopyError::NotEnabledHere));
    // A 7-byte ADVISE is refused by the record layer.
    let e = load(
        stream(|f| record::write_command(f, record::MIG_CMD_POSTCOPY_ADVISE, &[0; 7])),
        true,
    );
    assert!(matches!(e, MigrationError::Stream(_)), "{}", e.report());
}

#[test]
fn discards_are_checked() {
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            discard(f, "nosuch", vec![(0, PAGE)]);
        }),
        true,
    );
    assert!(matches!(e, MigrationError::UnknownRamBlock(ref b) if b == "nosuch"));
    for range in [
        (RAM, PAGE),
        (0, RAM + PAGE),
        (u64::MAX - PAGE + 1, PAGE),
        (1, PAGE),
        (0, 0),
    ] {
        let e = load(
            stream(|f| {
                advise(f, PAGE);
                discard(f, "pc.ram", vec![range]);
            }),
            true,
        );
        assert!(
            matches!(postcopy_err(e), PostcopyError::BadDiscard { .. }),
            "{range:?}"
        );
    }
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            record::write_command(f, record::MIG_CMD_POSTCOPY_RAM_DISCARD, &[7, 1, b'a', 0]);
        }),
        true,
    );
    assert!(matches!(e, MigrationError::Stream(_)), "{}", e.report());
}

#[test]
fn listen_needs_a_return_path_and_packages_are_bounded() {
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            record::write_command(f, record::MIG_CMD_POSTCOPY_LISTEN, &[]);
        }),
        true,
    );
    assert!(matches!(postcopy_err(e), PostcopyError::NoReturnPath));
    // 4 GiB announced, 3 bytes sent: the stream ends, nothing near 4 GiB is allocated.
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            record::write_command(f, record::MIG_CMD_PACKAGED, &u32::MAX.to_be_bytes());
            f.put_buffer(&[0x08, 0, 4]);
        }),
        true,
    );
    assert!(matches!(e, MigrationError::Stream(_)), "{}", e.report());
    // A package without RUN, and a package inside a package.
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            record::write_command(f, record::MIG_CMD_PACKAGED, &1u32.to_be_bytes());
            f.put_buffer(&[0]);
        }),
        true,
    );
    assert!(matches!(postcopy_err(e), PostcopyError::PackageWithoutRun));
    let e = load(
        stream(|f| {
            advise(f, PAGE);
            record::write_command(f, record::MIG_CMD_PACKAGED, &9u32.to_be_bytes());
            f.put_buffer(&[0x08, 0, 7, 0, 4, 0, 0, 0, 1]);
        }),
        true,
    );
    assert!(matches!(postcopy_err(e), PostcopyError::NestedPackage));
}

/// RECV_BITMAP and POSTCOPY_RESUME belong to a paused postcopy's recovery: anywhere else
/// (before ADVISE, after it) they are refused.
#[test]
fn recovery_commands_outside_recovery() {
    for advised in [false, true] {
        for (cmd, payload) in [
            (record::MIG_CMD_RECV_BITMAP, &b"\x06pc.ram"[..]),
            (record::MIG_CMD_POSTCOPY_RESUME, &[][..]),
        ] {
            let e = load(
                stream(|f| {
                    if advised {
                        advise(f, PAGE);
                    }
                    record::write_command(f, cmd, payload);
                }),
                true,
            );
            assert!(
                matches!(postcopy_err(e), PostcopyError::UnexpectedRecoveryMessage(_)),
                "command {cmd}"
            );
        }
    }
}
