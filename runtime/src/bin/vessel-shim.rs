//! `vessel-shim STATE_DIR`: supervise one container for the daemon. See
//! `vessel_runtime::shim`.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: vessel-shim STATE_DIR");
        std::process::exit(2);
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    std::process::exit(vessel_runtime::shim::launch(&PathBuf::from(dir)));
}
