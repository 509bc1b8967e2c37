//! The embedding example (`examples/embed.rs`) migrates itself between two processes: this
//! test runs the binary `cargo test` built next to it and checks that it succeeded.

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    // target/<profile>/deps/embed_example-HASH → target/<profile>/examples/embed
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("examples").join("embed")
}

#[test]
fn embedding_example_migrates_between_two_processes() {
    let path = example();
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    let out = Command::new(&path).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("migrated: Some(Completed)"), "{stdout}");
    assert!(stderr.contains("the guest runs on"), "{stderr}");
}
