//! Manual driver: `cargo run -p analyze --example analyze -- FILE|- [--json] [--desc] [--extract DIR]`.

use std::io::Read;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = analyze::AnalyzeOptions::default();
    let mut file = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => opts.json = true,
            "--desc" => opts.desc = true,
            "--extract" => opts.extract_dir = args.next().map(Into::into),
            _ => file = Some(a),
        }
    }
    let input: Box<dyn Read + Send> = match file.as_deref() {
        None | Some("-") => Box::new(std::io::stdin()),
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("cannot open {path}: {e}");
                std::process::exit(2);
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = analyze::analyze(input, &opts, &mut out) {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
