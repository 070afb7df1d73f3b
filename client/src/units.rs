//! Human units the docker CLI prints and parses: decimal and binary sizes
//! (`4.26MB`, `1.5GiB`), memory flags (`512m`), Go durations (`1m30s`),
//! "About an hour" style durations and timestamps.
//!
//! Pure functions only; no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unit parsing errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid size: '{0}'")]
    Size(String),
    #[error("time: invalid duration \"{0}\"")]
    Duration(String),
    #[error("invalid time {0:?}")]
    Time(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const DECIMAL: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
const BINARY: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];

fn scaled(mut size: f64, base: f64, units: &'static [&'static str; 9]) -> (f64, &'static str) {
    let mut i = 0;
    while size >= base && i < units.len() - 1 {
        size /= base;
        i += 1;
    }
    (size, units[i])
}

/// Decimal size with `precision` significant digits, as go-units'
/// `HumanSizeWithPrecision` (`4.26MB`).
pub fn human_size_prec(size: f64, precision: usize) -> String {
    let (v, unit) = scaled(size, 1000.0, &DECIMAL);
    format!("{}{unit}", go_g(v, precision))
}

/// Decimal size with 4 significant digits (go-units `HumanSize`).
pub fn human_size(size: f64) -> String {
    human_size_prec(size, 4)
}

/// Binary size with 4 significant digits (go-units `BytesSize`: `1.5GiB`).
pub fn bytes_size(size: f64) -> String {
    let (v, unit) = scaled(size, 1024.0, &BINARY);
    format!("{}{unit}", go_g(v, 4))
}

/// Go's `%.Ng` formatting of a float.
pub fn go_g(v: f64, precision: usize) -> String {
    let p = precision.max(1);
    if v == 0.0 {
        return "0".to_string();
    }
    // Round to p significant digits and find the decimal exponent.
    let sci = format!("{:.*e}", p - 1, v);
    let (mant, exp) = sci.split_once('e').expect("{:e} output has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if exp < -4 || exp >= p as i32 {
        let mant = trim_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let decimals = (p as i32 - 1 - exp).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Parse a size with binary multipliers as docker's `--memory`,
/// `--shm-size` and `--device-read-bps` do: `512m`, `1.5g`, `1024`,
/// `100kb`, `2GiB`.
pub fn ram_in_bytes(s: &str) -> Result<i64> {
    parse_size(s, 1024.0)
}

/// Parse a size with decimal multipliers (go-units `FromHumanSize`).
pub fn from_human_size(s: &str) -> Result<i64> {
    parse_size(s, 1000.0)
}

fn parse_size(s: &str, base: f64) -> Result<i64> {
    let bad = || Error::Size(s.to_string());
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(num_end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut chars = rest.chars();
    let mult = match chars.next() {
        None => 1.0,
        Some(c) => {
            let power = match c {
                'b' => 0,
                'k' => 1,
                'm' => 2,
                'g' => 3,
                't' => 4,
                'p' => 5,
                _ => return Err(bad()),
            };
            let tail: String = chars.collect();
            let ok = if power == 0 {
                tail.is_empty()
            } else {
                matches!(tail.as_str(), "" | "b" | "i" | "ib")
            };
            if !ok {
                return Err(bad());
            }
            base.powi(power)
        }
    };
    Ok((value * mult) as i64)
}

/// Parse a Go duration (`300ms`, `1.5h`, `2h45m`, `-1s`, `0`).
pub fn parse_go_duration(s: &str) -> Result<i64> {
    let bad = || Error::Duration(s.to_string());
    let mut t = s.trim();
    let neg = t.starts_with('-');
    t = t.trim_start_matches(['-', '+']);
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !t.is_empty() {
        let end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, rest) = t.split_at(end);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_end);
        let ns = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += v * ns;
        t = rest;
    }
    let v = total.round() as i64;
    Ok(if neg { -v } else { v })
}

/// Format nanoseconds as Go's `time.Duration.String` (`1m30s`, `500ms`).
pub fn go_duration_string(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let s = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", trim_zeros(&format!("{:.3}", u as f64 / 1e3)))
    } else if u < 1_000_000_000 {
        format!("{}ms", trim_zeros(&format!("{:.6}", u as f64 / 1e6)))
    } else {
        let h = u / 3_600_000_000_000;
        let m = (u / 60_000_000_000) % 60;
        let sec = (u % 60_000_000_000) as f64 / 1e9;
        let sec = trim_zeros(&format!("{sec:.9}")).to_string();
        if h > 0 {
            format!("{h}h{m}m{sec}s")
        } else if m > 0 {
            format!("{m}m{sec}s")
        } else {
            format!("{sec}s")
        }
    };
    if neg { format!("-{s}") } else { s }
}

/// go-units `HumanDuration`: "Less than a second", "About a minute",
/// "3 hours", "2 weeks".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    let seconds = secs as i64;
    let minutes = (secs / 60.0) as i64;
    if seconds < 1 {
        return "Less than a second".to_string();
    }
    if seconds == 1 {
        return "1 second".to_string();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    if minutes == 1 {
        return "About a minute".to_string();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (secs / 3600.0 + 0.5) as i64;
    if hours == 1 {
        return "About an hour".to_string();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", (secs / 3600.0 / 24.0 / 365.0) as i64)
}

/// "N units ago" for a unix timestamp (seconds), as `docker ps` and
/// `docker images` print it.
pub fn ago(unix: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let d = (now - unix as f64).max(0.0);
    format!("{} ago", human_duration(Duration::from_secs_f64(d)))
}

/// Parse an RFC 3339 timestamp to unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Result<i128> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp_nanos)
        .map_err(|_| Error::Time(s.to_string()))
}

/// Format unix seconds as docker's `CreatedAt` (`2006-01-02 15:04:05 -0700 MST`
/// in UTC: `... +0000 UTC`).
pub fn created_at(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// RFC 3339 with nanoseconds in UTC (`2006-01-02T15:04:05.000000000Z`), as
/// `docker events` prints times.
pub fn rfc3339_nano(unix_nanos: i128) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(unix_nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        ),
        Err(_) => unix_nanos.to_string(),
    }
}

/// A `--since`/`--until` value for logs and events: a unix timestamp,
/// an RFC 3339 time or a Go duration relative to now. Returns the value the
/// API takes (`seconds[.nanoseconds]`).
pub fn timestamp_arg(s: &str) -> Result<String> {
    if s.chars().all(|c| c.is_ascii_digit() || c == '.') && !s.is_empty() {
        return Ok(s.to_string());
    }
    if let Ok(ns) = parse_rfc3339(s) {
        return Ok(format!(
            "{}.{:09}",
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000)
        ));
    }
    if let Ok(d) = parse_go_duration(s) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let t = now - i128::from(d);
        return Ok(format!(
            "{}.{:09}",
            t.div_euclid(1_000_000_000),
            t.rem_euclid(1_000_000_000)
        ));
    }
    Err(Error::Time(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_go_units() {
        assert_eq!(human_size_prec(4_264_000.0, 3), "4.26MB");
        assert_eq!(human_size(0.0), "0B");
        assert_eq!(human_size(999.0), "999B");
        assert_eq!(human_size(1000.0), "1kB");
        assert_eq!(human_size(1_234_567.0), "1.235MB");
        assert_eq!(bytes_size(1536.0 * 1024.0 * 1024.0), "1.5GiB");
        assert_eq!(bytes_size(512.0), "512B");
        assert_eq!(human_size_prec(999_999.0, 3), "1e+03kB");
    }

    #[test]
    fn memory_flags_parse_binary() {
        assert_eq!(ram_in_bytes("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(ram_in_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(ram_in_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(ram_in_bytes("100").unwrap(), 100);
        assert_eq!(ram_in_bytes("10kb").unwrap(), 10240);
        assert_eq!(ram_in_bytes("2GiB").unwrap(), 2 << 30);
        assert!(ram_in_bytes("x").is_err());
        assert!(ram_in_bytes("1q").is_err());
        assert!(ram_in_bytes("").is_err());
        assert_eq!(from_human_size("1k").unwrap(), 1000);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s").unwrap(), 30_000_000_000);
        assert_eq!(parse_go_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_go_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_go_duration("250ms").unwrap(), 250_000_000);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert_eq!(go_duration_string(90_000_000_000), "1m30s");
        assert_eq!(go_duration_string(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration_string(1_500_000), "1.5ms");
    }

    #[test]
    fn human_durations_match_docker_wording() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(45)), "45 seconds");
        assert_eq!(human_duration(s(90)), "About a minute");
        assert_eq!(human_duration(s(600)), "10 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
        assert_eq!(human_duration(s(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(s(100 * 86400)), "3 months");
        assert_eq!(human_duration(s(3 * 365 * 86400)), "3 years");
    }

    #[test]
    fn timestamps() {
        assert_eq!(created_at(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            rfc3339_nano(1_500_000_000),
            "1970-01-01T00:00:01.500000000Z"
        );
        assert_eq!(timestamp_arg("1700000000").unwrap(), "1700000000");
        assert_eq!(
            timestamp_arg("1970-01-01T00:00:02Z").unwrap(),
            "2.000000000"
        );
        assert!(timestamp_arg("yesterday").is_err());
    }
}
