//! The 16550 UART at I/O port 0x3f8 (COM1, IRQ 4) — vm-superio's `Serial` — with its output
//! sink and its migratable state.
//!
//! Section `kvm-serial` (instance 0), version 1:
//!
//! ```text
//! u8 dll  u8 dlm  u8 ier  u8 iir  u8 lcr  u8 lsr  u8 mcr  u8 msr  u8 scr
//! be32 rx_len  rx[rx_len]          ; receive FIFO (at most 64 bytes)
//! ```

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use migration::{DeviceState, MigrationError};
use savevm::vmstate::{FieldKind, Value, VmStateDescription, VmStateValue};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::error::KvmError;

/// First I/O port of the UART.
pub const SERIAL_BASE: u16 = 0x3f8;
/// Number of I/O ports of the UART.
pub const SERIAL_PORTS: u16 = 8;
/// Guest IRQ line (GSI) of the UART.
pub const SERIAL_GSI: u32 = 4;
/// Cap on the in-memory capture of [`SerialSink::Buffer`].
pub const BUFFER_CAP: usize = 64 << 20;
const FIFO_CAP: usize = 64;

/// Where the guest's serial output goes.
pub enum SerialSink {
    /// Discard it.
    Null,
    /// The process's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer, e.g. a connected `UnixStream` or `TcpStream`.
    Writer(Box<dyn Write + Send>),
    /// Kept in memory (up to [`BUFFER_CAP`] bytes), read with [`super::KvmVm::serial_output`].
    Buffer,
}

impl std::fmt::Debug for SerialSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialSink::Null => f.write_str("Null"),
            SerialSink::Stdout => f.write_str("Stdout"),
            SerialSink::File(p) => write!(f, "File({})", p.display()),
            SerialSink::Writer(_) => f.write_str("Writer(..)"),
            SerialSink::Buffer => f.write_str("Buffer"),
        }
    }
}

/// The writer vm-superio writes transmitted bytes to.
pub(crate) struct SerialOut {
    out: Option<Box<dyn Write + Send>>,
    buffer: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Write for SerialOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(b) = &self.buffer {
            let mut b = lock(b);
            let room = BUFFER_CAP.saturating_sub(b.len());
            b.extend_from_slice(&data[..data.len().min(room)]);
        }
        if let Some(o) = &mut self.out {
            // Output errors (a closed socket) must not stop the guest: the byte is dropped.
            if o.write_all(data).and_then(|()| o.flush()).is_err() {
                self.out = None;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raises the UART's interrupt through an irqfd bound to GSI 4.
pub(crate) struct IrqTrigger(pub(crate) EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<IrqTrigger, NoEvents, SerialOut>;

/// The UART shared between the vCPU threads (port I/O) and the migration code (state).
pub(crate) struct SerialPort {
    uart: Mutex<Option<Uart>>,
    buffer: Option<Arc<Mutex<Vec<u8>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SerialPort {
    /// A UART writing to `sink`, interrupting through `irq`.
    pub(crate) fn new(sink: SerialSink, irq: EventFd) -> Result<SerialPort, KvmError> {
        let buffer = matches!(sink, SerialSink::Buffer).then(|| Arc::new(Mutex::new(Vec::new())));
        let out: Option<Box<dyn Write + Send>> = match sink {
            SerialSink::Null | SerialSink::Buffer => None,
            SerialSink::Stdout => Some(Box::new(io::stdout())),
            SerialSink::File(path) => Some(Box::new(
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|source| KvmError::SerialFile {
                        path: path.display().to_string(),
                        source,
                    })?,
            )),
            SerialSink::Writer(w) => Some(w),
        };
        let uart = Serial::new(
            IrqTrigger(irq),
            SerialOut {
                out,
                buffer: buffer.clone(),
            },
        );
        Ok(SerialPort {
            uart: Mutex::new(Some(uart)),
            buffer,
        })
    }

    /// Port read at `offset` (0..8) from the base.
    pub(crate) fn read(&self, offset: u8) -> u8 {
        lock(&self.uart).as_mut().map_or(0xff, |u| u.read(offset))
    }

    /// Port write at `offset` (0..8) from the base.
    pub(crate) fn write(&self, offset: u8, value: u8) {
        if let Some(u) = lock(&self.uart).as_mut() {
            if let Err(e) = u.write(offset, value) {
                tracing::debug!(?e, "serial write failed");
            }
        }
    }

    /// What the guest printed so far (only with [`SerialSink::Buffer`]).
    pub(crate) fn output(&self) -> Vec<u8> {
        self.buffer
            .as_ref()
            .map(|b| lock(b).clone())
            .unwrap_or_default()
    }

    pub(crate) fn state(&self) -> SerialState {
        lock(&self.uart)
            .as_ref()
            .map(|u| u.state())
            .unwrap_or_default()
    }

    pub(crate) fn restore(&self, state: &SerialState) -> Result<(), String> {
        let mut g = lock(&self.uart);
        let Some(old) = g.take() else {
            return Err("the serial port is gone".into());
        };
        let irq = match old.interrupt_evt().0.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                *g = Some(old);
                return Err(format!("cannot clone the interrupt eventfd: {e}"));
            }
        };
        let out = old.into_writer();
        match Serial::from_state(state, IrqTrigger(irq), NoEvents, out) {
            Ok(u) => {
                *g = Some(u);
                Ok(())
            }
            Err(e) => Err(format!("{e:?}")),
        }
    }
}

/// The `kvm-serial` device section.
pub(crate) struct SerialDevice(pub(crate) Arc<SerialPort>);

/// A `kvm-serial` section over a UART of its own that no VM is attached to (its interrupt
/// goes to an eventfd nobody reads): the section's save and load paths without /dev/kvm,
/// for tests and fuzzing.
pub fn detached_serial_device(sink: SerialSink) -> Result<Box<dyn DeviceState>, KvmError> {
    let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(|e| KvmError::Kvm {
        op: "eventfd",
        source: super::io_to_kvm(e),
    })?;
    Ok(Box::new(SerialDevice(Arc::new(SerialPort::new(
        sink, irq,
    )?))))
}

const REGS: [&str; 9] = [
    "dll", "dlm", "ier", "iir", "lcr", "lsr", "mcr", "msr", "scr",
];

impl DeviceState for SerialDevice {
    fn description(&self) -> VmStateDescription {
        let mut d = VmStateDescription::new("kvm-serial", 1).minimum_version(1);
        for r in REGS {
            d = d.field(r, FieldKind::U8);
        }
        d.field("rx_len", FieldKind::U32).field(
            "rx",
            FieldKind::VBuffer {
                len_field: "rx_len".into(),
            },
        )
    }

    fn save(&self) -> VmStateValue {
        let s = self.0.state();
        let regs = [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ];
        let mut v = VmStateValue::new();
        for (name, r) in REGS.iter().zip(regs) {
            v.set(*name, Value::Uint(u64::from(r)));
        }
        v.with("rx_len", Value::Uint(s.in_buffer.len() as u64))
            .with("rx", Value::Bytes(s.in_buffer))
    }

    fn load(&mut self, v: &VmStateValue, _version: u32) -> Result<(), MigrationError> {
        let err = |reason: String| MigrationError::DeviceLoad {
            idstr: "kvm-serial".into(),
            reason,
        };
        let r = |name: &str| v.get_u8(name).map_err(|e| err(e.to_string()));
        let rx = v.get_bytes("rx").map_err(|e| err(e.to_string()))?;
        if rx.len() > FIFO_CAP {
            return Err(err(format!(
                "receive FIFO holds {} bytes, at most {FIFO_CAP}",
                rx.len()
            )));
        }
        let state = SerialState {
            baud_divisor_low: r("dll")?,
            baud_divisor_high: r("dlm")?,
            interrupt_enable: r("ier")?,
            interrupt_identification: r("iir")?,
            line_control: r("lcr")?,
            line_status: r("lsr")?,
            modem_control: r("mcr")?,
            modem_status: r("msr")?,
            scratch: r("scr")?,
            in_buffer: rx.to_vec(),
        };
        check_registers(&state).map_err(err)?;
        self.0.restore(&state).map_err(err)
    }
}

/// IER bits of a 16550 (the model keeps no others).
const IER_BITS: u8 = 0x0f;
/// IIR values the model holds: no interrupt, or THR empty and/or data available pending (the
/// FIFO bits 7:6 are added when the guest reads IIR, never stored).
const IIR_VALUES: [u8; 4] = [0x01, 0x02, 0x04, 0x06];
/// LSR: THR empty and transmitter idle always set (a virtual UART sends at once), data ready
/// as the receive FIFO; the error bits (overrun, parity, framing, break) never occur.
const LSR_IDLE: u8 = 0x60;
const LSR_DATA_READY: u8 = 0x01;
/// MSR: CTS, DSR and DCD asserted, no delta bits; the model never changes it.
const MSR_VALUE: u8 = 0xb0;

/// Registers the UART model would misread: it derives its interrupt and line state from IIR
/// and LSR bits and never recomputes them, so e.g. an IIR without the "no interrupt" bit and
/// without a cause keeps the guest's driver in its interrupt handler. DLL, DLM, LCR, MCR and
/// SCR hold whatever the guest wrote, every value of them is valid.
pub(crate) fn check_registers(s: &SerialState) -> Result<(), String> {
    use crate::kvm::state::check::invalid;
    if s.interrupt_enable & !IER_BITS != 0 {
        return Err(invalid("ier", s.interrupt_enable, "bits 3:0"));
    }
    if !IIR_VALUES.contains(&s.interrupt_identification) {
        return Err(invalid(
            "iir",
            s.interrupt_identification,
            "0x1, 0x2, 0x4, 0x6",
        ));
    }
    let lsr = LSR_IDLE
        | if s.in_buffer.is_empty() {
            0
        } else {
            LSR_DATA_READY
        };
    if s.line_status != lsr {
        return Err(invalid(
            "lsr",
            s.line_status,
            &format!("{lsr:#x} with {} bytes received", s.in_buffer.len()),
        ));
    }
    if s.modem_status != MSR_VALUE {
        return Err(invalid("msr", s.modem_status, "0xb0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use savevm::qemu_file::{memory_reader, memory_writer};
    use savevm::vmstate;

    use super::*;

    fn port() -> Arc<SerialPort> {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        Arc::new(SerialPort::new(SerialSink::Buffer, irq).unwrap())
    }

    fn bytes(dev: &SerialDevice) -> Vec<u8> {
        let (mut w, buf) = memory_writer();
        vmstate::save(&dev.description(), &dev.save(), &mut w).unwrap();
        w.flush().unwrap();
        buf.contents()
    }

    #[test]
    fn output_is_captured_and_state_round_trips() {
        let a = port();
        for b in b"hi\n" {
            a.write(0, *b);
        }
        assert_eq!(a.output(), b"hi\n");
        a.write(3, 0x80); // LCR: DLAB on
        a.write(0, 0x0c); // divisor low: 9600 baud
        a.write(3, 0x03); // 8N1, DLAB off
        a.write(7, 0x5a); // scratch
        let src = SerialDevice(a);
        let saved = bytes(&src);
        let b = port();
        let mut dst = SerialDevice(b.clone());
        let desc = dst.description();
        let v = vmstate::load(&desc, 1, &mut memory_reader(saved.clone())).unwrap();
        dst.load(&v, 1).unwrap();
        assert_eq!(bytes(&dst), saved);
        assert_eq!(b.read(7), 0x5a);
        assert_eq!(b.read(3), 0x03);
        assert!(vmstate::load(&desc, 1, &mut memory_reader(saved[..5].to_vec())).is_err());
    }

    /// Register values the model would misread are refused, naming the register; the port
    /// keeps its state.
    #[test]
    fn hostile_registers_are_rejected() {
        let a = port();
        a.write(7, 0x5a);
        let mut dev = SerialDevice(a.clone());
        let good = dev.save();
        let cases: [(&str, u64); 7] = [
            ("ier", 0x10),
            ("iir", 0x00), // no "no interrupt" bit and no cause
            ("iir", 0xc1), // FIFO bits are never stored
            ("iir", 0x07),
            ("lsr", 0x61), // data ready with an empty FIFO
            ("lsr", 0x62), // overrun
            ("msr", 0xb1),
        ];
        for (reg, x) in cases {
            let mut v = good.clone();
            v.set(reg, Value::Uint(x));
            let e = dev.load(&v, 1).unwrap_err().to_string();
            assert!(e.contains(&format!("for {reg} ")), "{reg}={x:#x}: {e}");
        }
        let mut data = good.clone();
        data.set("rx_len", Value::Uint(1));
        data.set("rx", Value::Bytes(vec![b'x']));
        let e = dev.load(&data, 1).unwrap_err().to_string();
        assert!(e.contains("for lsr "), "{e}");
        data.set("lsr", Value::Uint(0x61));
        dev.load(&data, 1).unwrap();
        assert_eq!((a.read(5), a.read(0), a.read(7)), (0x61, b'x', 0x5a));
    }

    #[test]
    fn oversized_fifo_is_rejected() {
        let mut dev = SerialDevice(port());
        let mut v = dev.save();
        v.set("rx_len", Value::Uint(65));
        v.set("rx", Value::Bytes(vec![0; 65]));
        assert!(dev.load(&v, 1).is_err());
    }
}
