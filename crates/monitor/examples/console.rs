//! The operator console on its own: `cargo run -p monitor --example console -- SOCKET`
//! (what `livemig monitor SOCKET` runs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args().nth(1).ok_or("usage: console SOCKET")?;
    monitor::interactive(&target)?;
    Ok(())
}
