//! FHIR dates as ranges: a `date`, `dateTime` or `instant` stands for the whole interval its
//! precision covers (`2020-03` is all of March 2020), and search compares intervals (FHIR R4
//! search.html §3.1.1.4.x). Intervals are half-open `[low, high)` in microseconds since the Unix
//! epoch, UTC; a value without a time zone is taken as UTC.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::store::Comparison;

/// The lowest and highest representable instants, for open-ended periods.
pub const OPEN_LOW: i64 = i64::MIN;
pub const OPEN_HIGH: i64 = i64::MAX;

/// A half-open interval of instants, in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

/// Parses a FHIR date, dateTime or instant into the interval it covers.
pub fn parse_range(text: &str) -> Option<DateRange> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut pieces = date_part.split('-');
    let year: i32 = parse_digits(pieces.next()?, 4)?;
    let month = match pieces.next() {
        Some(m) => Some(parse_digits::<u8>(m, 2)?),
        None => None,
    };
    let day = match pieces.next() {
        Some(d) => Some(parse_digits::<u8>(d, 2)?),
        None => None,
    };
    if pieces.next().is_some() {
        return None;
    }
    let Some(time_part) = time_part else {
        return calendar_range(year, month, day);
    };
    let (month, day) = (month?, day?);
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    let (clock, offset) = split_offset(time_part)?;
    let mut fields = clock.split(':');
    let hour: u8 = parse_digits(fields.next()?, 2)?;
    let minute: u8 = parse_digits(fields.next()?, 2)?;
    let (seconds, fraction) = match fields.next() {
        Some(s) => match s.split_once('.') {
            Some((whole, fraction)) => (parse_digits::<u8>(whole, 2)?, Some(fraction)),
            None => (parse_digits::<u8>(s, 2)?, None),
        },
        None => (0, None),
    };
    let (micros, step) = match fraction {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let digits = f.len().min(6);
            let value: i64 = f[..digits].parse().ok()?;
            (value * 10_i64.pow(6 - digits as u32), 10_i64.pow(6 - digits as u32))
        }
        Some(_) => return None,
        None if text.matches(':').count() >= 2 => (0, 1_000_000),
        None => (0, 60_000_000),
    };
    let time = Time::from_hms(hour, minute, seconds.min(59)).ok()?;
    let at = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let low = at.unix_timestamp() * 1_000_000 + micros;
    Some(DateRange { low, high: low + step })
}

fn parse_digits<T: std::str::FromStr>(text: &str, width: usize) -> Option<T> {
    (text.len() == width && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

fn split_offset(time: &str) -> Option<(&str, UtcOffset)> {
    if let Some(clock) = time.strip_suffix('Z') {
        return Some((clock, UtcOffset::UTC));
    }
    match time.rfind(['+', '-']) {
        Some(at) => {
            let (clock, zone) = time.split_at(at);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = zone[1..].split_once(':')?;
            let hours: i8 = parse_digits(hours, 2)?;
            let minutes: i8 = parse_digits(minutes, 2)?;
            Some((clock, UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?))
        }
        None => Some((time, UtcOffset::UTC)),
    }
}

fn calendar_range(year: i32, month: Option<u8>, day: Option<u8>) -> Option<DateRange> {
    let start_of = |date: Date| date.midnight().assume_utc().unix_timestamp() * 1_000_000;
    let first = Date::from_calendar_date(year, Month::try_from(month.unwrap_or(1)).ok()?, day.unwrap_or(1)).ok()?;
    let next = match (month, day) {
        (None, _) => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
        (Some(12), None) => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
        (Some(m), None) => Date::from_calendar_date(year, Month::try_from(m + 1).ok()?, 1).ok()?,
        (Some(_), Some(_)) => first.next_day()?,
    };
    Some(DateRange { low: start_of(first), high: start_of(next) })
}

/// A search value's prefix (FHIR R4 search.html §3.1.1.4.x): the comparison, or `None` for
/// `ap` (approximately), which compares as `eq` on a widened range.
pub fn split_prefix(value: &str) -> (Option<Comparison>, &str) {
    let comparison = match value.get(..2) {
        Some("eq") => Comparison::Eq,
        Some("ne") => Comparison::Ne,
        Some("gt") => Comparison::Gt,
        Some("lt") => Comparison::Lt,
        Some("ge") => Comparison::Ge,
        Some("le") => Comparison::Le,
        Some("sa") => Comparison::Sa,
        Some("eb") => Comparison::Eb,
        Some("ap") => return (None, &value[2..]),
        _ => return (Some(Comparison::Eq), value),
    };
    (Some(comparison), &value[2..])
}

/// Widens a search range for `ap` (approximately): by 10% of its distance from now, at least
/// one day, as the specification suggests.
pub fn approximate(range: DateRange, now: OffsetDateTime) -> DateRange {
    let now = now.unix_timestamp() * 1_000_000;
    let distance = (now.saturating_sub(range.low)).unsigned_abs() / 10;
    let slack = distance.max(86_400_000_000).min(i64::MAX as u64) as i64;
    DateRange { low: range.low.saturating_sub(slack), high: range.high.saturating_add(slack) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(text: &str) -> i64 {
        let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
        (at.unix_timestamp_nanos() / 1000) as i64
    }

    #[test]
    fn partial_dates_are_ranges() {
        assert_eq!(
            parse_range("2020"),
            Some(DateRange { low: micros("2020-01-01T00:00:00Z"), high: micros("2021-01-01T00:00:00Z") })
        );
        assert_eq!(
            parse_range("2020-02"),
            Some(DateRange { low: micros("2020-02-01T00:00:00Z"), high: micros("2020-03-01T00:00:00Z") })
        );
        assert_eq!(
            parse_range("2020-12"),
            Some(DateRange { low: micros("2020-12-01T00:00:00Z"), high: micros("2021-01-01T00:00:00Z") })
        );
        assert_eq!(
            parse_range("2020-02-28"),
            Some(DateRange { low: micros("2020-02-28T00:00:00Z"), high: micros("2020-02-29T00:00:00Z") })
        );
    }

    #[test]
    fn times_respect_zones_and_precision() {
        let at = micros("2020-03-05T09:30:00Z");
        assert_eq!(parse_range("2020-03-05T10:30:00+01:00"), Some(DateRange { low: at, high: at + 1_000_000 }));
        assert_eq!(parse_range("2020-03-05T09:30:00.5Z"), Some(DateRange { low: at + 500_000, high: at + 600_000 }));
        assert_eq!(parse_range("2020-03-05T09:30Z"), Some(DateRange { low: at, high: at + 60_000_000 }));
        assert_eq!(parse_range("2020-03-05T04:30:00-05:00").unwrap().low, at);
    }

    #[test]
    fn rejects_nonsense() {
        for text in ["20", "2020-13", "2020-02-30", "2020-1-1", "2020-01-01T25:00:00Z", "abc", "2020-01-01T10:00:00.Z"]
        {
            assert_eq!(parse_range(text), None, "{text}");
        }
    }

    #[test]
    fn splits_prefixes() {
        assert_eq!(split_prefix("ge2020"), (Some(Comparison::Ge), "2020"));
        assert_eq!(split_prefix("2020"), (Some(Comparison::Eq), "2020"));
        assert_eq!(split_prefix("ap2020-01"), (None, "2020-01"));
    }
}
