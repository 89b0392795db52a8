//! Short human forms of the dashboard's numbers: bytes in binary units,
//! counts and rates with k/M/G suffixes, ages in the largest whole unit.

use std::time::Duration;

const BYTE_UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// `1536` → `1.5 KiB`; at most 8 characters (`1023 KiB`).
pub fn bytes(n: u64) -> String {
    bytes_f(n as f64)
}

fn bytes_f(v: f64) -> String {
    let mut v = v.abs();
    let mut unit = 0;
    while v >= 1023.5 && unit + 1 < BYTE_UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else if v < 99.95 {
        format!("{v:.1} {}", BYTE_UNITS[unit])
    } else {
        format!("{v:.0} {}", BYTE_UNITS[unit])
    }
}

/// A signed byte amount (growth per second): `+1.2 MiB`, `-512 B`, `0 B`;
/// `-` when not a number.
pub fn signed_bytes(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = bytes_f(v);
    if s.starts_with("0 ") {
        s
    } else if v < 0.0 {
        format!("-{s}")
    } else {
        format!("+{s}")
    }
}

/// A count or a plain number with a decimal suffix: `999`, `1.2k`, `12k`,
/// `3.4M`; `0.5` below 10 when fractional; `-` when not a number. At most
/// 5 characters for non-negative values.
pub fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a < 0.05 {
        return "0".into();
    }
    if a < 9.95 && a.fract() != 0.0 {
        return format!("{sign}{a:.1}");
    }
    if a < 999.5 {
        return format!("{sign}{a:.0}");
    }
    let mut s = a;
    for unit in ["k", "M", "G", "T", "P"] {
        s /= 1000.0;
        if s < 9.95 {
            return format!("{sign}{s:.1}{unit}");
        }
        if s < 999.5 || unit == "P" {
            return format!("{sign}{s:.0}{unit}");
        }
    }
    format!("{sign}{s:.0}P")
}

/// A whole count: exact below 1000, then `1.2k`, `12k`, `3.4M`.
pub fn count(n: u64) -> String {
    compact(n as f64)
}

/// `1 allocation`, `1.2k allocations`.
pub fn count_of(n: u64, what: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{} {what}{s}", count(n))
}

/// An age in its largest whole unit: `450ms`, `12s`, `3m`, `2h`, `4d`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.subsec_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// An optional age, `-` when unknown.
pub fn opt_age(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), age)
}

/// A duration with two units when it helps: `45s`, `12m30s`, `2h05m`, `3d4h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `12.345` → `12.3%`.
pub fn percent(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}%")
    } else {
        "-".into()
    }
}

/// A source path shortened to its last two components: `/a/b/c/d.rs` →
/// `c/d.rs`.
pub fn short_path(p: &str) -> &str {
    let mut slashes = p.rmatch_indices('/').map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(i)) => &p[i + 1..],
        _ => p,
    }
}

/// The file name of a module path.
pub fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 * 1024), "100 KiB");
        assert_eq!(bytes(1023 * 1024), "1023 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
        for n in [0, 999, 1023, 1 << 20, 999 << 20, 1023 << 30, 1000 << 40] {
            assert!(bytes(n).len() <= 8, "{n}: {}", bytes(n));
        }
    }

    #[test]
    fn signed_bytes_has_a_sign_unless_zero() {
        assert_eq!(signed_bytes(1536.0), "+1.5 KiB");
        assert_eq!(signed_bytes(-512.0), "-512 B");
        assert_eq!(signed_bytes(0.2), "0 B");
        assert_eq!(signed_bytes(-0.2), "0 B");
        assert_eq!(signed_bytes(f64::NAN), "-");
        assert_eq!(signed_bytes(f64::INFINITY), "-");
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(0.01), "0");
        assert_eq!(compact(0.5), "0.5");
        assert_eq!(compact(7.0), "7");
        assert_eq!(compact(42.4), "42");
        assert_eq!(compact(999.0), "999");
        assert_eq!(compact(999.6), "1.0k");
        assert_eq!(compact(1234.0), "1.2k");
        assert_eq!(compact(9960.0), "10k");
        assert_eq!(compact(123_456.0), "123k");
        assert_eq!(compact(999_600.0), "1.0M");
        assert_eq!(compact(3.4e9), "3.4G");
        assert_eq!(compact(-1500.0), "-1.5k");
        assert_eq!(compact(f64::NAN), "-");
        assert_eq!(count(1_200_000), "1.2M");
        assert_eq!(count(u64::MAX), "18447P");
        assert_eq!(count_of(1, "allocation"), "1 allocation");
        assert_eq!(count_of(1200, "allocation"), "1.2k allocations");
        for v in [0.3, 9.94, 9.96, 99.5, 999.4, 9_949.0, 99_500.0, 1e8] {
            assert!(compact(v).len() <= 5, "{v}: {}", compact(v));
        }
    }

    #[test]
    fn ages_in_one_unit() {
        assert_eq!(age(Duration::ZERO), "0ms");
        assert_eq!(age(Duration::from_millis(450)), "450ms");
        assert_eq!(age(Duration::from_secs(12)), "12s");
        assert_eq!(age(Duration::from_secs(200)), "3m");
        assert_eq!(age(Duration::from_secs(7300)), "2h");
        assert_eq!(age(Duration::from_secs(4 * 86_400 + 5)), "4d");
        assert_eq!(opt_age(None), "-");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(750)), "12m30s");
        assert_eq!(duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(duration(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d4h");
    }

    #[test]
    fn percent_and_paths() {
        assert_eq!(percent(12.345), "12.3%");
        assert_eq!(percent(f64::NAN), "-");
        assert_eq!(short_path("/usr/src/app/src/main.rs"), "src/main.rs");
        assert_eq!(short_path("src/main.rs"), "src/main.rs");
        assert_eq!(short_path("main.rs"), "main.rs");
        assert_eq!(file_name("/usr/lib/libc.so.6"), "libc.so.6");
        assert_eq!(file_name("libc.so.6"), "libc.so.6");
    }
}
