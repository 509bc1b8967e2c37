//! Builds the guest payload (guest/entry.S + guest/main.c) into `$OUT_DIR/payload.elf` with the
//! system C compiler and linker: a freestanding, statically linked ELF64 loaded at 1 MiB with a
//! PVH entry note. No Rust target for bare metal is needed. `CC` / `LD` override the tools.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mcmodel=small",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-builtin",
    "-nostdlib",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
];

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn compile(cc: &str, src: &Path, obj: &Path) {
    run(Command::new(cc)
        .args(CFLAGS)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj));
}

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest = manifest.join("guest");
    let cc = env::var("CC").unwrap_or_else(|_| "gcc".into());
    let ld = env::var("LD").unwrap_or_else(|_| "ld".into());
    for f in ["entry.S", "main.c", "payload.ld"] {
        println!("cargo:rerun-if-changed=guest/{f}");
    }
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=LD");
    let entry = out.join("entry.o");
    let main = out.join("main.o");
    compile(&cc, &guest.join("entry.S"), &entry);
    compile(&cc, &guest.join("main.c"), &main);
    run(Command::new(&ld)
        .args([
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "-z",
            "noexecstack",
        ])
        .arg("--no-warn-rwx-segments")
        .arg("-T")
        .arg(guest.join("payload.ld"))
        .arg(&entry)
        .arg(&main)
        .arg("-o")
        .arg(out.join("payload.elf")));
}
