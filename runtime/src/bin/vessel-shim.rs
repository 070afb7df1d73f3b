//! `vessel-shim STATE_DIR`: supervise one container for the daemon. See
//! `vessel_runtime::shim`.
//!
//! `vessel-shim ctl STATE_DIR COMMAND` talks to a running shim the way the
//! daemon does (debugging, tests): `start`, `state`, `wait`, `kill SIGNAL`,
//! `attach` (output until the exit; stdin with `-i`), `exec [-i] [-t] --
//! ARGS...` (exits with the process's code).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use vessel_runtime::shim::client::{self, Conn};
use vessel_runtime::shim::protocol::{EXIT_FILE, ExitStatus, Kind, Request, SOCKET};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    match args.first().map(String::as_str) {
        Some("ctl") => match ctl(&args[1..]) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("vessel-shim ctl: {e:#}");
                ExitCode::from(125)
            }
        },
        Some(dir) if args.len() == 1 => {
            let code = vessel_runtime::shim::launch(&PathBuf::from(dir));
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        _ => {
            eprintln!("usage: vessel-shim STATE_DIR | vessel-shim ctl STATE_DIR COMMAND");
            ExitCode::from(2)
        }
    }
}

fn ctl(args: &[String]) -> anyhow::Result<u8> {
    let (Some(dir), Some(cmd)) = (args.first(), args.get(1)) else {
        bail!(
            "usage: vessel-shim ctl STATE_DIR start|state|wait|kill SIG|attach [-i]|exec [-i] [-t] -- ARGS"
        );
    };
    let dir = PathBuf::from(dir);
    let rest = &args[2..];
    let flag = |f: &str| rest.iter().take_while(|a| *a != "--").any(|a| a == f);
    match cmd.as_str() {
        "start" => {
            let (_, r) = client::request(&dir, &Request::Start)?;
            println!("{}", r.pid.unwrap_or(0));
            Ok(0)
        }
        "state" => {
            let (_, r) = client::request(&dir, &Request::State)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(0)
        }
        "wait" => {
            let exit = wait_exit(&dir)?;
            if let Some(e) = &exit.error {
                eprintln!("error: {e}");
            }
            println!("{}", exit.code);
            Ok(0)
        }
        "kill" => {
            let sig = rest.first().map_or("TERM", String::as_str);
            let signal = vessel_runtime::parse_signal(sig)?;
            client::request(&dir, &Request::Signal { signal })?;
            Ok(0)
        }
        "attach" => {
            let stdin = flag("-i");
            let (conn, _) = client::request(
                &dir,
                &Request::Attach {
                    stdin,
                    stdout: true,
                    stderr: true,
                },
            )?;
            stream(conn, stdin)
        }
        "exec" => {
            let argv: Vec<String> = rest
                .iter()
                .skip_while(|a| *a != "--")
                .skip(1)
                .cloned()
                .collect();
            if argv.is_empty() {
                bail!("exec needs -- ARGS");
            }
            let stdin = flag("-i");
            let mut process = oci_spec::runtime::Process::default();
            process.set_args(Some(argv));
            process.set_terminal(Some(flag("-t")));
            process.set_env(Some(vec![format!("PATH={}", vessel_runtime::DEFAULT_PATH)]));
            let (conn, _) = client::request(&dir, &Request::Exec { process, stdin })?;
            stream(conn, stdin)
        }
        other => bail!("unknown command {other}"),
    }
}

/// Forward our stdin (if asked) and print the output until the exit frame.
fn stream(mut conn: Conn, stdin: bool) -> anyhow::Result<u8> {
    if stdin {
        let mut w = conn.writer.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut input = std::io::stdin();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = client::write_frame(&mut w, Kind::CloseStdin, &[]);
                        return;
                    }
                    Ok(n) => {
                        if client::write_frame(&mut w, Kind::Stdin, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    let status = client::pump_output(&mut conn, &mut out, &mut err)?;
    out.flush()?;
    let status = status.context("the shim closed the stream without an exit status")?;
    if let Some(e) = &status.error {
        eprintln!("error: {e}");
    }
    Ok(u8::try_from(status.code.clamp(0, 255)).unwrap_or(255))
}

/// The container's exit status: from the shim, or, when the shim is gone
/// or going (it answers waiters only after writing it), from its exit.json,
/// as the daemon reads it. A connection the shim closes while its socket
/// is still there (it is finishing) is retried for a few seconds.
fn wait_exit(dir: &std::path::Path) -> anyhow::Result<ExitStatus> {
    let mut failures = 0;
    loop {
        match client::request(dir, &Request::Wait) {
            Ok((_, r)) => return r.exit.context("the shim ended without an exit status"),
            Err(e) => {
                if let Ok(data) = std::fs::read(dir.join(EXIT_FILE)) {
                    return serde_json::from_slice(&data)
                        .with_context(|| format!("{}/{EXIT_FILE}", dir.display()));
                }
                failures += 1;
                // No socket and no status: no shim ever ran here, or it
                // died without finishing.
                if failures >= 300 || !dir.join(SOCKET).exists() {
                    return Err(e.into());
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
