//! Parsers for the scalar forms the documents use: Go-style durations, Kubernetes
//! quantities (v1alpha1 weights) and `host:port` endpoints. Each returns a reason string
//! that the caller wraps with the file, document and field.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// `500ms`, `10s`, `2m`, `1h`, `1m30s`, `1.5s`, `0s` (the forms Kubernetes users write).
/// Not `humantime::parse_duration`: it also takes `2 seconds`, `1d`, `3 weeks` and the like,
/// which these documents refuse (tests/config.rs pins `2 seconds` as an error).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as 500ms, 10s or 2m, got {text:?}");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A size in bytes: a number, or a number with a unit: `B`, `KiB`/`Ki`, `MiB`/`Mi`,
/// `GiB`/`Gi` (powers of 1024) or `KB`/`k`, `MB`/`M`, `GB`/`G` (powers of 1000).
pub fn parse_size(value: &serde_yaml::Value) -> Result<u64, String> {
    let text = match value {
        serde_yaml::Value::Number(n) => {
            return n
                .as_u64()
                .ok_or_else(|| format!("expected a size in bytes such as 32KiB, got {n}"))
        }
        serde_yaml::Value::String(s) => s.trim(),
        _ => return Err("expected a size in bytes such as 32KiB or 1048576".to_string()),
    };
    let bad = || format!("expected a size in bytes such as 32KiB or 1MiB, got {text:?}");
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "k" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).ok_or_else(bad)
}

/// A Kubernetes quantity as milli-units: `1` = 1000, `500m` = 500, `1.5` = 1500,
/// `2k` = 2 000 000. Fractions of a milli-unit round up, as Kubernetes does.
pub fn parse_quantity_milli(text: &str) -> Result<i128, String> {
    let bad =
        || format!("expected a number or a Kubernetes quantity such as 500m or 1, got {text:?}");
    let s = text.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_len);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    // (multiplier numerator, power of ten) for the suffix, applied to milli-units
    let (binary, exp10): (i128, i32) = match suffix {
        "" => (1, 3),
        "m" => (1, 0),
        "k" => (1, 6),
        "M" => (1, 9),
        "G" => (1, 12),
        "T" => (1, 15),
        "P" => (1, 18),
        "E" => (1, 21),
        "Ki" => (1 << 10, 3),
        "Mi" => (1 << 20, 3),
        "Gi" => (1 << 30, 3),
        "Ti" => (1 << 40, 3),
        "Pi" => (1 << 50, 3),
        "Ei" => (1 << 60, 3),
        _ => return Err(bad()),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(format!("{text:?} is too large"));
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let too_large = || format!("{text:?} is too large");
    let exp = exp10 - i32::try_from(frac_part.len()).unwrap_or(i32::MAX);
    let value = if exp >= 0 {
        10i128
            .checked_pow(exp.unsigned_abs())
            .and_then(|p| mantissa.checked_mul(p))
            .and_then(|v| v.checked_mul(binary))
            .ok_or_else(too_large)?
    } else {
        let scaled = mantissa.checked_mul(binary).ok_or_else(too_large)?;
        // rounded up; a divisor past i128 exceeds any `scaled`, which then rounds up to 1
        match 10i128.checked_pow(exp.unsigned_abs()) {
            Some(div) => scaled / div + i128::from(scaled % div != 0),
            None => i128::from(scaled != 0),
        }
    };
    Ok(if negative { -value } else { value })
}

/// One entry of `spec.services`: `host:port`, host an IP (IPv6 in brackets) or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An IP literal: no resolution needed.
    Ip(SocketAddr),
    /// A DNS name, lower-case: resolved when a table is built, then periodically.
    Dns { host: String, port: u16 },
}

impl Endpoint {
    /// The address, when no resolution is needed.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Ip(addr) => Some(*addr),
            Endpoint::Dns { .. } => None,
        }
    }

    /// The host without the port: the IP (IPv6 without brackets) or the DNS name.
    pub fn host(&self) -> String {
        match self {
            Endpoint::Ip(addr) => addr.ip().to_string(),
            Endpoint::Dns { host, .. } => host.clone(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(addr) => write!(f, "{addr}"),
            Endpoint::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let bad =
        |why: &str| format!("expected host:port such as 127.0.0.1:8080, got {text:?} ({why})");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad("port must be 1-65535"));
        }
        return Ok(Endpoint::Ip(addr));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    if port == 0 {
        return Err(bad("port must be 1-65535"));
    }
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return Err(bad("bad address"));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_name {
        return Err(bad("bad host name"));
    }
    Ok(Endpoint::Dns {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// `0.0.0.0:8443`, `127.0.0.1:0`, `[::]:8443` or `:8443` (all IPv4 addresses).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    if text == "localhost" || text.starts_with("localhost:") {
        if let Some(Ok(port)) = text.strip_prefix("localhost:").map(str::parse::<u16>) {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    text.parse().map_err(|_| {
        format!("expected an address such as 0.0.0.0:8443 or 127.0.0.1:9901, got {text:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let size = |y: &str| parse_size(&serde_yaml::from_str(y).unwrap());
        assert_eq!(size("32KiB"), Ok(32 * 1024));
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert_eq!(size("10 MB"), Ok(10_000_000));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("0"), Ok(0));
        assert!(size("-1").is_err());
        assert!(size("1.5KiB").is_err());
        assert!(size("12 parsecs").is_err());
        assert!(size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "10x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        let q = |s| parse_quantity_milli(s).unwrap();
        assert_eq!(q("1"), 1000);
        assert_eq!(q("500m"), 500);
        assert_eq!(q("1500m"), 1500);
        assert_eq!(q("1.5"), 1500);
        assert_eq!(q("0.0005"), 1); // rounds up to a milli-unit
        assert_eq!(q("2k"), 2_000_000);
        assert_eq!(q("1Ki"), 1_024_000);
        assert_eq!(q("0"), 0);
        assert_eq!(q("-5"), -5000);
        for bad in ["", "m", "1x", "1.2.3", "abc", "."] {
            assert!(parse_quantity_milli(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities_with_long_fractions() {
        // the power of ten of a long fraction overflowed i128 (a panic in debug builds, a
        // wrong weight in release), and so did rounding a large one up
        let zeros = |n| "0".repeat(n);
        assert_eq!(parse_quantity_milli(&format!("0.{}1", zeros(60))), Ok(1));
        assert_eq!(parse_quantity_milli(&format!("-0.{}1", zeros(60))), Ok(-1));
        assert_eq!(parse_quantity_milli(&format!("0.{}", zeros(60))), Ok(0));
        // 1e20 * 2^60 / 1e38 = 1.15..., up to 2
        let near_max = format!("0.{}1{}Ei", zeros(20), zeros(20));
        assert_eq!(parse_quantity_milli(&near_max), Ok(2));
        assert_eq!(parse_quantity_milli("0.0015"), Ok(2));
        assert_eq!(parse_quantity_milli("0.001"), Ok(1));
    }

    #[test]
    fn endpoints() {
        let e = parse_endpoint("127.0.0.1:8081").unwrap();
        assert_eq!(e, Endpoint::Ip("127.0.0.1:8081".parse().unwrap()));
        let e = parse_endpoint("[::1]:80").unwrap();
        assert_eq!(e, Endpoint::Ip("[::1]:80".parse().unwrap()));
        assert_eq!((e.host(), e.to_string()), ("::1".into(), "[::1]:80".into()));
        let e = parse_endpoint("My-Svc.default.svc:9000").unwrap();
        assert_eq!(
            e,
            Endpoint::Dns {
                host: "my-svc.default.svc".into(),
                port: 9000
            }
        );
        assert_eq!(e.to_string(), "my-svc.default.svc:9000");
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:70000",
            ":80",
            "a b:80",
            "1.2.3:80x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
