//! The QEMU 7.2 savevm stream format.
//!
//! This crate knows the bytes of a migration stream and nothing about VMs: it is shared by the
//! sender and the receiver so both sides use the same encoders and decoders.
//!
//! | module | what |
//! | --- | --- |
//! | [`qemu_file`] | buffered big-endian stream, sticky errors, rate-limit counters |
//! | [`record`] | header, configuration, section headers/footers, commands, EOF, VMDESCRIPTION |
//! | [`ram`] | RAM records (MEM_SIZE, ZERO, PAGE, XBZRLE, EOS) and the XBZRLE codec |
//! | [`block`] | block-migration records |
//! | [`vmstate`] | versioned device-state descriptions driving save, load and the JSON description |
//! | [`multifd`] | multifd channel hello and packet header |
//! | [`multifd_codec`] | multifd zlib / zstd packet compression (one stream per channel) |
//! | [`vmdesc`] | the VMDESCRIPTION JSON trailer in QEMU's compact formatting |
//!
//! ```
//! use savevm::qemu_file::{memory_reader, memory_writer};
//! use savevm::record::{self, Record, SectionHeader};
//!
//! let (mut w, out) = memory_writer();
//! record::write_header(&mut w);
//! SectionHeader::Full { section_id: 0, idstr: "timer".into(), instance_id: 0, version_id: 2 }
//!     .write_to(&mut w);
//! w.put_be64(42);
//! record::write_footer(&mut w, 0);
//! record::write_eof(&mut w);
//! w.flush().unwrap();
//!
//! let mut r = memory_reader(out.contents());
//! record::read_header(&mut r).unwrap();
//! let Record::Section(h) = record::read_record(&mut r).unwrap() else { panic!() };
//! assert_eq!(h.idstr(), Some("timer"));
//! assert_eq!(r.get_be64().unwrap(), 42);
//! record::read_footer(&mut r, h.section_id()).unwrap();
//! assert_eq!(record::read_record(&mut r).unwrap(), Record::Eof);
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod block;
mod error;
pub mod multifd;
pub mod multifd_codec;
pub mod qemu_file;
pub mod ram;
pub mod record;
pub mod vmdesc;
pub mod vmstate;

pub use error::{Error, Result};
