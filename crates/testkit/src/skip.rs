//! Visible skips. The test harness hides what passing tests print, so a test that cannot run
//! here (no KVM, no QEMU) writes `SKIP: <why>` straight to stderr and returns; `cargo test`
//! shows the line even though the test counts as passed.
//!
//! Each `require_*` function checks one thing and prints the SKIP line itself when it is
//! missing, so a test starts with:
//!
//! ```
//! # fn test() {
//! let Some(_qemu) = testkit::require_qemu_system("my_test") else {
//!     return;
//! };
//! # }
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// QEMU's system emulator, used for interop tests.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";
/// QEMU's disk image tool.
pub const QEMU_IMG: &str = "qemu-img";

/// Prints `SKIP: {msg}` straight to stderr (not through the captured test output).
pub fn print_skip(msg: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {msg}");
}

/// Whether `/dev/kvm` opens and creates a VM (a readable device node is not enough: the
/// module may be loaded without hardware support, or the user lacks permission).
pub fn kvm_usable() -> bool {
    kvm_ioctls::Kvm::new().and_then(|k| k.create_vm()).is_ok()
}

/// [`kvm_usable`], printing `SKIP: /dev/kvm not usable ({test})` when it is not.
pub fn require_kvm(test: &str) -> bool {
    let ok = kvm_usable();
    if !ok {
        print_skip(&format!("/dev/kvm not usable ({test})"));
    }
    ok
}

/// The first file called `name` in a directory of `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| c.is_file())
}

/// `name` on `PATH` if `name --version` runs and succeeds.
fn runnable(name: &str) -> Option<PathBuf> {
    let path = find_program(name)?;
    Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(path)
}

/// `qemu-system-x86_64` if installed and runnable; otherwise prints
/// `SKIP: qemu-system-x86_64 not installed ({test}) ...`.
pub fn require_qemu_system(test: &str) -> Option<PathBuf> {
    let found = runnable(QEMU_SYSTEM);
    if found.is_none() {
        print_skip(&format!(
            "{QEMU_SYSTEM} not installed ({test}; apt-get install qemu-system-x86)"
        ));
    }
    found
}

/// `qemu-img` if installed and runnable; otherwise prints `SKIP: qemu-img not installed ...`.
pub fn require_qemu_img(test: &str) -> Option<PathBuf> {
    let found = runnable(QEMU_IMG);
    if found.is_none() {
        print_skip(&format!(
            "{QEMU_IMG} not installed ({test}; apt-get install qemu-utils)"
        ));
    }
    found
}

/// Whether `python3 -c 'import qemu.qmp'` succeeds.
pub fn python_qmp_available() -> bool {
    Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// [`python_qmp_available`], printing a SKIP line when it is not.
pub fn require_python_qmp(test: &str) -> bool {
    let ok = python_qmp_available();
    if !ok {
        print_skip(&format!(
            "python3 with the qemu.qmp package is not available ({test}; pip install qemu.qmp)"
        ));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_only() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute()));
        assert!(find_program("livemig-no-such-program").is_none());
        assert!(runnable("livemig-no-such-program").is_none());
        assert!(require_qemu_img("testkit self-test").is_some() == runnable(QEMU_IMG).is_some());
    }

    #[test]
    fn require_kvm_agrees_with_kvm_usable() {
        assert_eq!(require_kvm("testkit self-test"), kvm_usable());
    }
}
