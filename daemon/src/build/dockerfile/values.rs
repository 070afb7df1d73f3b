//! Typed values that appear in instruction arguments and flags: durations,
//! file modes, ports, signals, sizes and booleans. Each parser returns a
//! short lowercase reason on failure; the caller adds the line and text.

use std::fmt;
use std::time::Duration;

/// Parses a boolean the way Dockerfile flags accept them (`--link=true`).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses a duration in the notation of HEALTHCHECK options: a sequence of
/// decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`), such as `1m30s` or `1.5s`; a bare `0` is allowed. Negative values
/// are rejected because no option accepts them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut chars = rest.char_indices().peekable();
    while chars.peek().is_some() {
        let mut int: u128 = 0;
        let mut frac: u128 = 0;
        let mut frac_scale: u128 = 1;
        let mut digits = 0;
        while let Some(&(_, c)) = chars.peek() {
            let Some(d) = c.to_digit(10) else { break };
            int = int
                .checked_mul(10)
                .and_then(|v| v.checked_add(d as u128))
                .ok_or_else(bad)?;
            digits += 1;
            chars.next();
        }
        if let Some(&(_, '.')) = chars.peek() {
            chars.next();
            while let Some(&(_, c)) = chars.peek() {
                let Some(d) = c.to_digit(10) else { break };
                if frac_scale < 1_000_000_000_000 {
                    frac = frac * 10 + d as u128;
                    frac_scale *= 10;
                }
                digits += 1;
                chars.next();
            }
        }
        if digits == 0 {
            return Err(bad());
        }
        let start = chars.peek().map_or(rest.len(), |&(i, _)| i);
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c.is_ascii_digit() || c == '.' {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let unit: u128 = match &rest[start..end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            _ => {
                return Err(format!(
                    "unknown unit {:?} in duration {s:?}",
                    &rest[start..end]
                ));
            }
        };
        let part = int
            .checked_mul(unit)
            .and_then(|v| v.checked_add(frac * unit / frac_scale))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// A `--chmod` value: octal bits or a chmod(1) symbolic expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    /// Absolute permission bits, at most `0o7777`.
    Octal(u32),
    /// A symbolic expression such as `u=rwX,go=rX` or `+x`, already
    /// validated; apply it with [`Chmod::apply`].
    Symbolic(String),
}

impl Chmod {
    /// Parses octal (`755`, `0644`) or symbolic (`u+x`, `g=u`, `a-w,o+t`)
    /// notation.
    pub fn parse(s: &str) -> Result<Chmod, String> {
        if s.is_empty() {
            return Err("empty --chmod value".to_string());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(s, 8) {
                Ok(v) if v <= 0o7777 => Ok(Chmod::Octal(v)),
                _ => Err(format!(
                    "invalid file mode {s:?}: octal modes go up to 7777"
                )),
            };
        }
        for clause in s.split(',') {
            symbolic_clause(clause).map_err(|r| format!("invalid file mode {s:?}: {r}"))?;
        }
        Ok(Chmod::Symbolic(s.to_string()))
    }

    /// Returns the permission bits a file of mode `mode` (permission bits
    /// only) gets. `is_dir` decides what `X` means.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(v) => *v,
            Chmod::Symbolic(s) => {
                let mut m = mode & 0o7777;
                for clause in s.split(',') {
                    if let Ok(c) = symbolic_clause(clause) {
                        m = c.apply(m, is_dir);
                    }
                }
                m
            }
        }
    }
}

impl fmt::Display for Chmod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chmod::Octal(v) => write!(f, "{v:04o}"),
            Chmod::Symbolic(s) => f.write_str(s),
        }
    }
}

struct Clause {
    who: u32,
    actions: Vec<(char, Perm)>,
}

enum Perm {
    /// `rwx` as bits for all classes, plus `X`, `s` and `t`.
    Bits {
        rwx: u32,
        big_x: bool,
        setid: bool,
        sticky: bool,
    },
    Copy(char),
}

const WHO_U: u32 = 0o4700;
const WHO_G: u32 = 0o2070;
const WHO_O: u32 = 0o1007;

fn symbolic_clause(clause: &str) -> Result<Clause, String> {
    let mut chars = clause.chars().peekable();
    let mut who = 0;
    while let Some(&c) = chars.peek() {
        match c {
            'u' => who |= WHO_U,
            'g' => who |= WHO_G,
            'o' => who |= WHO_O,
            'a' => who |= WHO_U | WHO_G | WHO_O,
            _ => break,
        }
        chars.next();
    }
    if who == 0 {
        who = WHO_U | WHO_G | WHO_O;
    }
    let mut actions = Vec::new();
    while let Some(op) = chars.next() {
        if !matches!(op, '+' | '-' | '=') {
            return Err(format!("unexpected {op:?} where +, - or = belongs"));
        }
        if let Some(c) = chars.next_if(|c| matches!(c, 'u' | 'g' | 'o')) {
            actions.push((op, Perm::Copy(c)));
            continue;
        }
        let (mut rwx, mut big_x, mut setid, mut sticky) = (0, false, false, false);
        while let Some(&c) = chars.peek() {
            match c {
                'r' => rwx |= 0o444,
                'w' => rwx |= 0o222,
                'x' => rwx |= 0o111,
                'X' => big_x = true,
                's' => setid = true,
                't' => sticky = true,
                '+' | '-' | '=' => break,
                _ => return Err(format!("unexpected {c:?} in permissions")),
            }
            chars.next();
        }
        actions.push((
            op,
            Perm::Bits {
                rwx,
                big_x,
                setid,
                sticky,
            },
        ));
    }
    if actions.is_empty() {
        return Err(format!("clause {clause:?} has no operator"));
    }
    Ok(Clause { who, actions })
}

impl Clause {
    fn apply(&self, mut mode: u32, is_dir: bool) -> u32 {
        let rwx_mask = self.who & 0o777;
        for (op, perm) in &self.actions {
            let bits = match perm {
                Perm::Bits {
                    rwx,
                    big_x,
                    setid,
                    sticky,
                } => {
                    let mut b = *rwx;
                    if *big_x && (is_dir || mode & 0o111 != 0) {
                        b |= 0o111;
                    }
                    b &= rwx_mask;
                    if *setid {
                        b |= self.who & 0o6000;
                    }
                    if *sticky && self.who & 0o1000 != 0 {
                        b |= 0o1000;
                    }
                    b
                }
                Perm::Copy(from) => {
                    let src = match from {
                        'u' => (mode >> 6) & 7,
                        'g' => (mode >> 3) & 7,
                        _ => mode & 7,
                    };
                    (src * 0o111) & rwx_mask
                }
            };
            match op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                _ => {
                    let clear = rwx_mask | (self.who & 0o6000);
                    mode = (mode & !clear) | bits;
                }
            }
        }
        mode
    }
}

/// The transport protocol of an exposed port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// One EXPOSE entry: a port or an inclusive port range with its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub start: u16,
    pub end: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    /// Parses `80`, `80/udp` or `8000-8010/tcp`; the protocol defaults to
    /// tcp and is case-insensitive.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto),
            None => (s, "tcp"),
        };
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => {
                return Err(format!(
                    "invalid protocol {proto:?} in port {s:?}: use tcp, udp or sctp"
                ));
            }
        };
        let parse_port = |p: &str| -> Result<u16, String> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid port {s:?}"));
            }
            p.parse::<u16>()
                .map_err(|_| format!("port {s:?} is out of range"))
        };
        let (start, end) = if let Some((a, b)) = ports.split_once('-') {
            (parse_port(a)?, parse_port(b)?)
        } else {
            let p = parse_port(ports)?;
            (p, p)
        };
        if end < start {
            return Err(format!("invalid port range {s:?}: end before start"));
        }
        Ok(PortSpec {
            start,
            end,
            protocol,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}/{}", self.start, self.protocol)
        } else {
            write!(f, "{}-{}/{}", self.start, self.end, self.protocol)
        }
    }
}

const SIGNALS: &[(&str, u32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Returns the Linux signal number of a STOPSIGNAL value: a number from 1
/// to 64 or a name with or without the `SIG` prefix (`SIGTERM`, `kill`,
/// `RTMIN+3`).
pub fn parse_signal(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal {s:?}: numbers go from 1 to 64"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(nm, _)| *nm == name) {
        return Ok(n);
    }
    let rt = |base: u32, rest: &str, sign: i64| -> Option<u32> {
        if rest.is_empty() {
            return Some(base);
        }
        let off: i64 = rest.parse().ok()?;
        let n = i64::from(base) + sign * off;
        (34..=64).contains(&n).then_some(n as u32)
    };
    let found = if let Some(rest) = name.strip_prefix("RTMIN") {
        rest.strip_prefix('+').map_or_else(
            || if rest.is_empty() { Some(34) } else { None },
            |r| rt(34, r, 1),
        )
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        rest.strip_prefix('-').map_or_else(
            || if rest.is_empty() { Some(64) } else { None },
            |r| rt(64, r, -1),
        )
    } else {
        None
    };
    found.ok_or_else(|| format!("invalid signal {s:?}"))
}

/// Parses a size such as `64m`, `1g`, `512k`, `1048576` or `64MiB`
/// (binary multiples).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}");
    let digits_end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.contains('.') || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(bad()),
    };
    let int: u64 = int.parse().map_err(|_| bad())?;
    let mut bytes = int.checked_mul(mult).ok_or_else(bad)?;
    // A fractional part ("1.5g") counts to whole bytes.
    let mut scale = mult;
    for d in frac.bytes().take(18) {
        scale /= 10;
        bytes = bytes
            .checked_add(u64::from(d - b'0') * scale)
            .ok_or_else(bad)?;
    }
    Ok(bytes)
}

/// Parses an octal file mode such as `0755` for mount options.
pub(crate) fn parse_octal_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(v) if v <= 0o7777 && !s.is_empty() => Ok(v),
        _ => Err(format!("invalid octal mode {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(2 * 3600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn chmod_octal_and_symbolic() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0644").unwrap(), Chmod::Octal(0o644));
        assert!(Chmod::parse("888").is_err());
        assert!(Chmod::parse("17777").is_err());
        assert!(Chmod::parse("u+q").is_err());
        assert!(Chmod::parse("").is_err());
        let c = Chmod::parse("u=rwX,go=rX").unwrap();
        assert_eq!(c.apply(0o600, true), 0o755);
        assert_eq!(c.apply(0o600, false), 0o644);
        assert_eq!(c.apply(0o700, false), 0o755);
        assert_eq!(Chmod::parse("+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("g=u").unwrap().apply(0o640, false), 0o660);
        assert_eq!(Chmod::parse("a-w,o+t").unwrap().apply(0o777, true), 0o1555);
        assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
    }

    #[test]
    fn ports() {
        assert_eq!(PortSpec::parse("80").unwrap().to_string(), "80/tcp");
        assert_eq!(PortSpec::parse("53/UDP").unwrap().to_string(), "53/udp");
        assert_eq!(
            PortSpec::parse("8000-8010/tcp").unwrap().to_string(),
            "8000-8010/tcp"
        );
        assert!(PortSpec::parse("80/icmp").is_err());
        assert!(PortSpec::parse("70000").is_err());
        assert!(PortSpec::parse("90-80").is_err());
        assert!(PortSpec::parse("http").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("RTMAX").unwrap(), 64);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGFOO").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512kib").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
    }
}
