//! The local terminal: whether a descriptor is a terminal, raw mode with
//! restore on drop, window size, and reading a password without echo.
//!
//! Raw syscalls (`ioctl(TIOCGWINSZ)`) are confined here.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor number; any value is safe.
    unsafe { libc::isatty(fd) == 1 }
}

/// Standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    is_tty(0)
}

/// Standard output is a terminal.
pub fn stdout_is_tty() -> bool {
    is_tty(1)
}

/// Standard error is a terminal.
pub fn stderr_is_tty() -> bool {
    is_tty(2)
}

/// The window size of the terminal on `fd` as (rows, columns).
pub fn window_size(fd: i32) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which
    // points at a live, properly aligned local.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &raw mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The size of whichever of stdout/stdin is a terminal.
pub fn terminal_size() -> Option<(u16, u16)> {
    window_size(1).or_else(|| window_size(0))
}

/// A terminal in raw mode; the previous mode is restored on drop.
pub struct RawMode {
    fd: i32,
    saved: Termios,
}

impl RawMode {
    /// Put `fd` (a terminal) into raw mode.
    pub fn enable(fd: i32) -> nix::Result<RawMode> {
        let borrowed = borrow(fd);
        let saved = termios::tcgetattr(borrowed)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Keep output post-processing so "\n" still returns the carriage
        // for anything we print ourselves.
        raw.output_flags |= termios::OutputFlags::OPOST;
        termios::tcsetattr(borrowed, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(borrow(self.fd), SetArg::TCSANOW, &self.saved);
    }
}

fn borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: 0, 1 and 2 (the only descriptors passed here) stay open for
    // the life of the process.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Read a line from the terminal without echo (for passwords). Falls back
/// to a plain read when stdin is not a terminal.
pub fn read_password(prompt: &str) -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let tty = stdin_is_tty();
    let saved = if tty {
        let fd = stdin.as_fd();
        let saved = termios::tcgetattr(fd).map_err(std::io::Error::from)?;
        let mut t = saved.clone();
        t.local_flags.remove(termios::LocalFlags::ECHO);
        termios::tcsetattr(fd, SetArg::TCSANOW, &t).map_err(std::io::Error::from)?;
        Some(saved)
    } else {
        None
    };
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &saved);
        eprintln!();
    }
    r?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
