//! The checks every [`DeviceState`] must pass (STYLE practice 9, after crosvm's suspendable
//! tests), stamped onto a type with [`device_state_conformance!`](crate::device_state_conformance):
//!
//! 1. [`check_round_trip`]: save → VMState bytes → load into a fresh instance → save again
//!    gives the same bytes, and (unless the device only *checks* what it loads) the fresh
//!    instance saved something else before;
//! 2. [`check_truncated`]: every strict prefix of the body fails to load (an error, not a
//!    panic), a value with no fields is refused by the device, and through the real loader
//!    ([`migration::incoming::load_stream`]) a stream with a truncated section fails while the
//!    whole one loads;
//! 3. [`check_newer_version`]: a section whose version is newer than
//!    `description().version_id` is refused, by the VMState loader and by the stream loader;
//! 4. [`check_hostile_values`]: every integer field (in structs and lists too) and sampled
//!    bytes of every buffer, set to boundary values (0, 1, each width's maximum and top bit),
//!    load without panicking; a refusal is a `DeviceLoad` error naming the
//!    device; an accepted value is kept (what the device saves next loads again).
//!
//! The checks assume a description with at least one field (a device with nothing to
//! migrate needs no section).

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use migration::incoming::{load_stream, ReturnPath};
use migration::{IncomingSession, MigrationError, Registry};
use savevm::qemu_file::{memory_reader, memory_writer};
use savevm::record::{self, Configuration, SectionHeader};
use savevm::vmstate::{self, Value, VmStateValue};

pub use migration::DeviceState;

/// Machine type of the streams built here.
pub const MACHINE: &str = "testkit";

/// Boxes a device (the form the conformance checks and the registry take).
pub fn boxed(dev: impl DeviceState + 'static) -> Box<dyn DeviceState> {
    Box::new(dev)
}

/// The VMState body `dev` saves now.
pub fn save_bytes(dev: &dyn DeviceState) -> Vec<u8> {
    let desc = dev.description();
    let (mut w, buf) = memory_writer();
    if let Err(e) = vmstate::save(&desc, &dev.save(), &mut w) {
        panic!("{}: save failed: {e}", desc.name);
    }
    w.flush().expect("flush a memory writer");
    buf.contents()
}

/// A whole migration stream (header, configuration, one FULL section of `idstr` instance 0
/// with `version` and `body`, footer, EOF) for machine [`MACHINE`].
pub fn device_stream(idstr: &str, version: u32, body: &[u8]) -> Vec<u8> {
    let (mut w, buf) = memory_writer();
    record::write_header(&mut w);
    Configuration {
        machine: MACHINE.into(),
        ..Configuration::default()
    }
    .write_to(&mut w);
    SectionHeader::Full {
        section_id: 0,
        idstr: idstr.into(),
        instance_id: 0,
        version_id: version,
    }
    .write_to(&mut w);
    w.put_buffer(body);
    record::write_footer(&mut w, 0);
    record::write_eof(&mut w);
    w.flush().expect("flush a memory writer");
    buf.contents()
}

/// Runs [`load_stream`] on `stream` into a registry holding `dev` as `idstr` instance 0, and
/// gives the device back.
fn load_into(
    dev: Box<dyn DeviceState>,
    idstr: &str,
    stream: Vec<u8>,
) -> (Result<(), MigrationError>, Registry) {
    let mut registry = Registry::new();
    registry.register_device(idstr, Some(0), dev);
    let r = load_stream(
        Box::new(Cursor::new(stream)),
        &mut registry,
        MACHINE,
        &mut ReturnPath::new(None),
        &mut IncomingSession::standalone(),
    );
    (r, registry)
}

/// Check 1: save → load into `fresh` → save is byte-identical. With `load_applies`, `fresh`
/// must save different bytes before the load (else the check would prove nothing); pass
/// `false` for devices whose load only verifies local state (e.g. `ram-verify`).
pub fn check_round_trip(
    populated: &dyn DeviceState,
    fresh: &mut dyn DeviceState,
    load_applies: bool,
) {
    let desc = fresh.description();
    let name = &desc.name;
    assert_eq!(
        populated.description().version_id,
        desc.version_id,
        "{name}: populated and fresh instances describe different versions"
    );
    let bytes = save_bytes(populated);
    if load_applies {
        assert!(
            save_bytes(fresh) != bytes,
            "{name}: the fresh instance already saves the populated state"
        );
    }
    let mut r = memory_reader(bytes.clone());
    let value = vmstate::load(&desc, desc.version_id, &mut r)
        .unwrap_or_else(|e| panic!("{name}: its own body does not load: {e}"));
    assert_eq!(
        r.bytes_read(),
        bytes.len() as u64,
        "{name}: loading stopped before the end of the body"
    );
    if let Err(e) = fresh.load(&value, desc.version_id) {
        panic!("{name}: its own state is refused: {}", e.report());
    }
    let again = save_bytes(fresh);
    if let Some(at) = first_difference(&again, &bytes) {
        panic!(
            "{name}: save → load → save differs at byte {at} ({} bytes, first save {})",
            again.len(),
            bytes.len()
        );
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// At most this many cut points are tried per body (all of them for shorter bodies).
const MAX_CUTS: usize = 4096;

/// Check 2: truncated bodies are errors, not panics; see the [module docs](self).
pub fn check_truncated(populated: &dyn DeviceState, fresh: Box<dyn DeviceState>) {
    let desc = fresh.description();
    let name = desc.name.clone();
    let bytes = save_bytes(populated);
    assert!(!bytes.is_empty(), "{name}: empty body");
    let step = bytes.len().div_ceil(MAX_CUTS);
    let cuts = (0..bytes.len()).step_by(step).chain([bytes.len() - 1]);
    for cut in cuts {
        let r = catch_unwind(AssertUnwindSafe(|| {
            vmstate::load(
                &desc,
                desc.version_id,
                &mut memory_reader(bytes[..cut].to_vec()),
            )
        }));
        match r {
            Err(_) => panic!("{name}: loading the body cut to {cut} bytes panicked"),
            Ok(Ok(v)) => panic!("{name}: the body cut to {cut} bytes loaded as {v:?}"),
            Ok(Err(_)) => {}
        }
    }
    let mut fresh = fresh;
    let empty = catch_unwind(AssertUnwindSafe(|| {
        fresh.load(&VmStateValue::new(), desc.version_id)
    }));
    match empty {
        Err(_) => panic!("{name}: loading a value without fields panicked"),
        Ok(Ok(())) => panic!("{name}: a value without fields was accepted"),
        Ok(Err(_)) => {}
    }

    let half = device_stream(&name, desc.version_id, &bytes[..bytes.len() / 2]);
    let (r, mut registry) = load_into(fresh, &name, half);
    assert!(r.is_err(), "{name}: a stream with half a section loaded");
    let whole = device_stream(&name, desc.version_id, &bytes);
    let r = load_stream(
        Box::new(Cursor::new(whole)),
        &mut registry,
        MACHINE,
        &mut ReturnPath::new(None),
        &mut IncomingSession::standalone(),
    );
    if let Err(e) = r {
        panic!("{name}: the whole section does not load: {}", e.report());
    }
}

/// Check 3: a section version newer than `description().version_id` is refused.
pub fn check_newer_version(populated: &dyn DeviceState, fresh: Box<dyn DeviceState>) {
    let desc = fresh.description();
    let name = desc.name.clone();
    let bytes = save_bytes(populated);
    let newer = desc.version_id + 1;
    assert!(
        matches!(
            vmstate::load(&desc, newer, &mut memory_reader(bytes.clone())),
            Err(savevm::Error::VersionTooNew { .. })
        ),
        "{name}: version {newer} loaded"
    );
    let (r, _) = load_into(fresh, &name, device_stream(&name, newer, &bytes));
    match r {
        Err(MigrationError::UnsupportedVersion { version, .. }) if version == newer => {}
        Err(e) => panic!(
            "{name}: version {newer} refused for the wrong reason: {}",
            e.report()
        ),
        Ok(()) => panic!("{name}: a stream with version {newer} loaded"),
    }
}

/// Boundary values of every integer width (those out of a field's range do not save and are
/// skipped), and of a byte.
const HOSTILE_INTS: [u64; 14] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];
const HOSTILE_BYTES: [u64; 5] = [0, 1, 0x7f, 0x80, 0xff];

fn hostile_ints(bits: u32) -> &'static [u64] {
    if bits == 8 {
        &HOSTILE_BYTES
    } else {
        &HOSTILE_INTS
    }
}

/// Every place of `v` worth a hostile value: (path, 8 for bytes and bools else 64). Lists give
/// their first two and last elements, buffers their first 64 bytes and every 61st after.
fn hostile_targets(v: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, u32)>) {
    match v {
        Value::Uint(_) | Value::Int(_) => out.push((path.clone(), 64)),
        Value::Bool(_) => out.push((path.clone(), 8)),
        Value::Bytes(b) => {
            for i in (0..b.len()).filter(|&i| i < 64 || i % 61 == 0) {
                path.push(Step::Byte(i));
                out.push((path.clone(), 8));
                path.pop();
            }
        }
        Value::List(l) => {
            let mut idx: Vec<usize> = (0..l.len().min(2)).collect();
            idx.extend(l.len().checked_sub(1).filter(|&i| i >= 2));
            for i in idx {
                path.push(Step::Item(i));
                hostile_targets(&l[i], path, out);
                path.pop();
            }
        }
        Value::Struct(s) => {
            for (name, f) in &s.fields {
                path.push(Step::Field(name.clone()));
                hostile_targets(f, path, out);
                path.pop();
            }
        }
    }
}

/// One step of a path into a value.
#[derive(Clone, Debug)]
enum Step {
    Field(String),
    Item(usize),
    Byte(usize),
}

/// `v` with the integer at `path` set to `x` (same variant; bytes and bools truncated).
fn with_value(v: &VmStateValue, path: &[Step], x: u64) -> VmStateValue {
    fn set(v: &mut Value, path: &[Step], x: u64) {
        match (v, path) {
            (Value::Uint(u), []) => *u = x,
            (Value::Int(i), []) => *i = x as i64,
            (Value::Bool(b), []) => *b = x & 1 != 0,
            (Value::Bytes(b), [Step::Byte(i)]) => b[*i] = x as u8,
            (Value::List(l), [Step::Item(i), rest @ ..]) => set(&mut l[*i], rest, x),
            (Value::Struct(s), [Step::Field(n), rest @ ..]) => {
                if let Some((_, f)) = s.fields.iter_mut().find(|(k, _)| k == n) {
                    set(f, rest, x);
                }
            }
            _ => {}
        }
    }
    let mut out = v.clone();
    let mut root = Value::Struct(std::mem::take(&mut out));
    set(&mut root, path, x);
    match root {
        Value::Struct(s) => s,
        _ => unreachable!("the root stays a struct"),
    }
}

/// Check 4: hostile field values; see the [module docs](self). Length fields are tried too:
/// a value that no longer saves (its list has another length) is skipped.
pub fn check_hostile_values(populated: &dyn DeviceState, mut fresh: Box<dyn DeviceState>) {
    let desc = fresh.description();
    let name = desc.name.clone();
    let bytes = save_bytes(populated);
    let value = vmstate::load(&desc, desc.version_id, &mut memory_reader(bytes))
        .unwrap_or_else(|e| panic!("{name}: its own body does not load: {e}"));
    let mut targets = Vec::new();
    hostile_targets(&Value::Struct(value.clone()), &mut Vec::new(), &mut targets);
    let (mut tried, mut refused) = (0, 0);
    for (path, bits) in targets {
        for &x in hostile_ints(bits) {
            let hostile = with_value(&value, &path, x);
            let (mut w, buf) = memory_writer();
            if vmstate::save(&desc, &hostile, &mut w).is_err() || w.flush().is_err() {
                continue;
            }
            let Ok(loaded) =
                vmstate::load(&desc, desc.version_id, &mut memory_reader(buf.contents()))
            else {
                continue;
            };
            tried += 1;
            let r = catch_unwind(AssertUnwindSafe(|| fresh.load(&loaded, desc.version_id)));
            match r {
                Err(_) => panic!("{name}: {path:?} = {x:#x} panicked"),
                Ok(Err(MigrationError::DeviceLoad { idstr, .. })) if idstr == name => refused += 1,
                Ok(Err(
                    MigrationError::VerifyMismatch(_) | MigrationError::DiskVerifyMismatch(_),
                )) => refused += 1,
                Ok(Err(e)) => panic!(
                    "{name}: {path:?} = {x:#x} refused without naming the device: {}",
                    e.report()
                ),
                Ok(Ok(())) => {
                    let kept = save_bytes(&*fresh);
                    let again = vmstate::load(&desc, desc.version_id, &mut memory_reader(kept));
                    let reload = again.map(|v| fresh.load(&v, desc.version_id));
                    if !matches!(reload, Ok(Ok(()))) {
                        panic!("{name}: {path:?} = {x:#x} was accepted but not kept");
                    }
                }
            }
        }
    }
    assert!(tried > 0, "{name}: no field could be given a hostile value");
    eprintln!("{name}: {tried} hostile values, {refused} refused");
}

/// Stamps the [conformance checks](crate::conformance) onto a device type: a module `$name`
/// with one `#[test]` per check. Each test evaluates the expressions anew:
///
/// * `requires` (optional): a `bool`; when false the test returns (print the SKIP line in it,
///   e.g. [`require_kvm`](crate::require_kvm));
/// * `populated`: a `Box<dyn DeviceState>` holding lived-in state;
/// * `fresh`: a `Box<dyn DeviceState>` of the same type as a destination creates it;
/// * `load_only_checks: true` (optional): load verifies instead of applying, so the fresh
///   instance may save the same bytes before loading.
///
/// ```
/// use migration::GlobalState;
/// use testkit::conformance::boxed;
///
/// fn stored(runstate: &str) -> GlobalState {
///     let g = GlobalState::new();
///     g.store(runstate);
///     g
/// }
///
/// testkit::device_state_conformance!(globalstate {
///     populated: boxed(stored("paused")),
///     fresh: boxed(GlobalState::new()),
/// });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! device_state_conformance {
    ($name:ident {
        $(requires: $requires:expr,)?
        populated: $populated:expr,
        fresh: $fresh:expr
        $(, load_only_checks: $checks:literal)?
        $(,)?
    }) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn save_load_save_is_identical() {
                $(if !$requires { return; })?
                let populated: ::std::boxed::Box<dyn $crate::conformance::DeviceState> =
                    $populated;
                let mut fresh: ::std::boxed::Box<dyn $crate::conformance::DeviceState> = $fresh;
                let load_applies = true $(&& !$checks)?;
                $crate::conformance::check_round_trip(&*populated, &mut *fresh, load_applies);
            }

            #[test]
            fn truncated_body_is_an_error() {
                $(if !$requires { return; })?
                let populated: ::std::boxed::Box<dyn $crate::conformance::DeviceState> =
                    $populated;
                $crate::conformance::check_truncated(&*populated, $fresh);
            }

            #[test]
            fn hostile_values_are_refused_or_kept() {
                $(if !$requires { return; })?
                let populated: ::std::boxed::Box<dyn $crate::conformance::DeviceState> =
                    $populated;
                $crate::conformance::check_hostile_values(&*populated, $fresh);
            }

            #[test]
            fn newer_version_is_rejected() {
                $(if !$requires { return; })?
                let populated: ::std::boxed::Box<dyn $crate::conformance::DeviceState> =
                    $populated;
                $crate::conformance::check_newer_version(&*populated, $fresh);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use savevm::vmstate::{FieldKind, VmStateDescription};

    /// Two registers; `forget_b` loads only `a`, `lenient` takes missing fields as 0,
    /// `trusting` indexes a 4-entry table with `b`.
    #[derive(Default)]
    struct Pair {
        a: u32,
        b: u32,
        forget_b: bool,
        lenient: bool,
        trusting: bool,
    }

    impl DeviceState for Pair {
        fn description(&self) -> VmStateDescription {
            VmStateDescription::new("pair", 2)
                .minimum_version(1)
                .field("a", FieldKind::U32)
                .field("b", FieldKind::U32)
        }

        fn save(&self) -> VmStateValue {
            VmStateValue::new()
                .with("a", Value::Uint(self.a.into()))
                .with("b", Value::Uint(self.b.into()))
        }

        fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
            let get = |name: &str| match v.get_u32(name) {
                Err(_) if self.lenient => Ok(0),
                r => r.map_err(|e| MigrationError::DeviceLoad {
                    idstr: "pair".into(),
                    reason: e.to_string(),
                }),
            };
            self.a = get("a")?;
            if !self.forget_b {
                self.b = get("b")?;
            }
            if self.trusting {
                let table = [1u8, 2, 3, 4];
                std::hint::black_box(table[self.b as usize]);
            }
            Ok(())
        }
    }

    fn populated() -> Pair {
        Pair {
            a: 1,
            b: 2,
            ..Pair::default()
        }
    }

    crate::device_state_conformance!(correct_device {
        populated: boxed(populated()),
        fresh: boxed(Pair::default()),
    });

    #[test]
    #[should_panic(expected = "pair: save → load → save differs at byte 7")]
    fn a_device_that_drops_state_fails() {
        let mut fresh = Pair {
            forget_b: true,
            ..Pair::default()
        };
        check_round_trip(&populated(), &mut fresh, true);
    }

    #[test]
    #[should_panic(expected = "pair: the fresh instance already saves the populated state")]
    fn a_fixture_that_proves_nothing_fails() {
        check_round_trip(&populated(), &mut populated(), true);
    }

    #[test]
    #[should_panic(expected = "pair: [Field(\"b\")] = 0x7f panicked")]
    fn a_device_that_trusts_an_index_fails() {
        let fresh = Pair {
            trusting: true,
            ..Pair::default()
        };
        check_hostile_values(&populated(), boxed(fresh));
    }

    #[test]
    #[should_panic(expected = "pair: a value without fields was accepted")]
    fn a_device_that_accepts_missing_fields_fails() {
        let fresh = Pair {
            lenient: true,
            ..Pair::default()
        };
        check_truncated(&populated(), boxed(fresh));
    }
}
