//! UTC times as the GraphQL Analytics API writes them (`Time`:
//! `2026-12-01T00:00:00Z`, `Date`: `2026-12-01`), to and from Unix seconds,
//! without a date crate: the proleptic Gregorian calendar of
//! <https://howardhinnant.github.io/date_algorithms.html>.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: i64 = 86_400;

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The time `seconds` after the Unix epoch.
pub(crate) fn from_unix_seconds(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn format_time(seconds: i64) -> String {
    let (days, rest) = (seconds.div_euclid(DAY), seconds.rem_euclid(DAY));
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_date(days),
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the form of an error's timestamp.
pub(crate) fn format_time_nanos(t: SystemTime) -> String {
    let nanos = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let whole = format_time(unix_seconds(t));
    format!("{}.{nanos:09}Z", whole.trim_end_matches('Z'))
}

/// `YYYY-MM-DD` of day `days` after 1970-01-01.
pub(crate) fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// An RFC 3339 date-time (`T` or space, optional fraction, `Z` or an offset),
/// as Unix seconds; the fraction is dropped.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let days = parse_date(s.get(..10)?)?;
    let rest = s.get(10..)?;
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
    let (h, m, sec) = (two_digits(rest, 0)?, two_digits(rest, 3)?, two_digits(rest, 6)?);
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut zone = rest.get(8..)?;
    if let Some(fraction) = zone.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        zone = &fraction[digits..];
    }
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (oh, om) = (two_digits(zone, 1)?, two_digits(zone, 4)?);
            if zone.len() != 6 || zone.get(3..4)? != ":" || oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days * DAY + h * 3600 + m * 60 + sec - offset)
}

/// `YYYY-MM-DD` as days after 1970-01-01.
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = s.get(..4)?.parse::<i64>().ok()?;
    let (m, d) = (two_digits(s, 5)?, two_digits(s, 8)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn two_digits(s: &str, at: usize) -> Option<i64> {
    let digits = s.get(at..at + 2)?;
    if !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_offsets_count() {
        // 2026-12-06T13:04:05Z is 1796562245 (date -u -d ... +%s).
        assert_eq!(parse_time("2026-12-06T13:04:05Z"), Some(1_796_562_245));
        assert_eq!(format_time(1_796_562_245), "2026-12-06T13:04:05Z");
        assert_eq!(parse_time("2026-12-06T14:04:05.123+01:00"), Some(1_796_562_245));
        assert_eq!(
            parse_time("2024-02-29T00:00:00Z").map(format_time).as_deref(),
            Some("2024-02-29T00:00:00Z")
        );
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(format_date(20_793), "2026-12-06");
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "2026-12-06",
            "2026-12-06T13:04Z",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-12-06T24:00:00Z",
            "2026-12-06T13:04:05",
            "2026-12-06T13:04:05.Z",
            "2026-12-06T13:04:05+0100",
            "yesterday",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
