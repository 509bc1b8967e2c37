//! The `livemig` command-line tool.
fn main() {}
