//! The items of FHIRPath collections: nodes of the JSON resource (with their FHIR type when
//! known) and the system values (Boolean, String, Integer, Decimal, Date, DateTime, Time,
//! Quantity), with FHIRPath's equality, equivalence and ordering.

use std::cmp::Ordering;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

/// One item of a collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A node of the resource: an element's JSON value (absent for a primitive that has only an
    /// id or extensions), its `_name` companion, and its FHIR type when known.
    Node(Node<'a>),
    Bool(bool),
    Str(String),
    Int(i64),
    Dec(Decimal),
    Date(Temporal),
    DateTime(Temporal),
    Time(Temporal),
    Quantity(Decimal, String),
}

/// A node of the resource.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub value: Option<&'a Value>,
    /// The `_element` object of a primitive (its id and extensions).
    pub companion: Option<&'a Value>,
    /// The FHIR type (`HumanName`, `date`), a backbone element's path (`Patient.contact`), or
    /// `None` when the model does not know it.
    pub type_name: Option<String>,
}

impl<'a> Node<'a> {
    pub fn new(value: &'a Value, type_name: Option<String>) -> Self {
        Node { value: Some(value), companion: None, type_name }
    }

    /// The resource type of a node that is a resource.
    pub fn resource_type(&self) -> Option<&'a str> {
        self.value?.get("resourceType")?.as_str()
    }

    /// The node's type: its resource type, else what the model said.
    pub fn type_of(&self) -> Option<&str> {
        self.resource_type().or(self.type_name.as_deref())
    }
}

/// The precision a date, dateTime or time was given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

/// A date, dateTime or time: its components down to its precision, and its time zone offset
/// in minutes when it has one. Seconds carry their fraction (milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Temporal {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub millis: u32,
    pub precision: Precision,
    pub offset: Option<i32>,
    /// A time of day (no date).
    pub time_only: bool,
}

impl Temporal {
    /// Parses a date (`2015`, `2015-02`, `2015-02-04`), a dateTime (`2015-02-04T14:34:28.123+09:00`,
    /// also `2015T`), or with `time_only` a time (`14:34:28`).
    pub fn parse(text: &str, time_only: bool) -> Option<Temporal> {
        let mut t = Temporal {
            year: 0,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            millis: 0,
            precision: Precision::Year,
            offset: None,
            time_only,
        };
        let time = if time_only {
            text
        } else {
            let (date, time) = match text.split_once('T') {
                Some((date, time)) => (date, Some(time)),
                None => (text, None),
            };
            let mut parts = date.split('-');
            let year = parts.next()?;
            if year.len() != 4 {
                return None;
            }
            t.year = year.parse().ok()?;
            if let Some(month) = parts.next() {
                t.month = two_digits(month)?;
                t.precision = Precision::Month;
                if !(1..=12).contains(&t.month) {
                    return None;
                }
            }
            if let Some(day) = parts.next() {
                t.day = two_digits(day)?;
                t.precision = Precision::Day;
                if t.day == 0 || t.day > 31 {
                    return None;
                }
            }
            if parts.next().is_some() {
                return None;
            }
            match time {
                None | Some("") => return Some(t),
                Some(time) => time,
            }
        };
        let (clock, offset) = split_offset(time)?;
        t.offset = offset;
        let mut parts = clock.split(':');
        t.hour = two_digits(parts.next()?)?;
        t.precision = Precision::Hour;
        if let Some(minute) = parts.next() {
            t.minute = two_digits(minute)?;
            t.precision = Precision::Minute;
        }
        if let Some(second) = parts.next() {
            let (whole, fraction) = second.split_once('.').unwrap_or((second, ""));
            let seconds = two_digits(whole)?;
            let mut millis = 0;
            for (place, digit) in fraction.chars().take(3).enumerate() {
                millis += digit.to_digit(10)? * 10u32.pow(2 - place as u32);
            }
            t.millis = seconds * 1000 + millis;
            t.precision = Precision::Second;
        }
        if parts.next().is_some() || t.hour > 23 || t.minute > 59 || t.millis >= 61_000 {
            return None;
        }
        Some(t)
    }

    /// Minutes since the epoch in UTC (when it has a time and an offset), else its local fields.
    fn instant_fields(&self) -> (i64, u32) {
        let days = days_from_civil(self.year, self.month, self.day);
        let minutes =
            days * 1440 + i64::from(self.hour) * 60 + i64::from(self.minute) - i64::from(self.offset.unwrap_or(0));
        (minutes, self.millis)
    }

    /// FHIRPath ordering: `None` when the two are not comparable to the precision they share.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        if self.time_only != other.time_only {
            return None;
        }
        let shared = self.precision.min(other.precision);
        // One with a time zone and one without cannot be ordered.
        if shared >= Precision::Hour && !self.time_only && self.offset.is_some() != other.offset.is_some() {
            return None;
        }
        let with_time = shared >= Precision::Hour && (self.offset.is_some() || other.offset.is_some());
        let ordering = if with_time && shared >= Precision::Minute {
            let (a, b) = (self.instant_fields(), other.instant_fields());
            let minutes = a.0.cmp(&b.0);
            match shared {
                Precision::Second => minutes.then(a.1.cmp(&b.1)),
                _ => minutes,
            }
        } else {
            let fields = |t: &Temporal| {
                [t.year as i64, t.month as i64, t.day as i64, t.hour as i64, t.minute as i64, t.millis as i64]
            };
            let depth = match shared {
                Precision::Year => 1,
                Precision::Month => 2,
                Precision::Day => 3,
                Precision::Hour => 4,
                Precision::Minute => 5,
                Precision::Second => 6,
            };
            let skip = if self.time_only { 3 } else { 0 };
            fields(self)[skip..depth.max(skip + 1)].cmp(&fields(other)[skip..depth.max(skip + 1)])
        };
        if ordering == Ordering::Equal && self.precision != other.precision {
            return None;
        }
        Some(ordering)
    }
}

fn two_digits(text: &str) -> Option<u32> {
    (text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

/// A clock time and its zone offset in minutes (`Z` is 0).
fn split_offset(time: &str) -> Option<(&str, Option<i32>)> {
    if let Some(clock) = time.strip_suffix('Z') {
        return Some((clock, Some(0)));
    }
    match time.rfind(['+', '-']) {
        Some(at) => {
            let (clock, zone) = time.split_at(at);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            Some((clock, Some(sign * (two_digits(h)? as i32 * 60 + two_digits(m)? as i32))))
        }
        None => Some((time, None)),
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// UCUM codes of the calendar durations FHIRPath names in words that have a definite length
/// (a calendar year or month is not `a` or `mo`, whose lengths are averages).
pub fn canonical_unit(unit: &str) -> &str {
    match unit {
        "year" => "years",
        "month" => "months",
        "week" | "weeks" => "wk",
        "day" | "days" => "d",
        "hour" | "hours" => "h",
        "minute" | "minutes" => "min",
        "second" | "seconds" => "s",
        "millisecond" | "milliseconds" => "ms",
        other => other,
    }
}

impl<'a> Item<'a> {
    /// The system value of a node, by its FHIR type (or its JSON type when unknown); complex
    /// nodes stay nodes, except a Quantity.
    pub fn to_system(&self) -> Item<'a> {
        let Item::Node(node) = self else { return self.clone() };
        let Some(value) = node.value else { return self.clone() };
        let type_name = node.type_name.as_deref().unwrap_or("");
        match (type_name, value) {
            (_, Value::Bool(b)) => Item::Bool(*b),
            ("decimal", Value::Number(n)) => decimal_of(n).map(Item::Dec).unwrap_or_else(|| self.clone()),
            // With `arbitrary_precision` (this crate's serde_json feature) `as_i64` parses the
            // number's own text: `1.0` and `1e2` are not integers.
            (_, Value::Number(n)) => match n.as_i64() {
                Some(i) => Item::Int(i),
                None => decimal_of(n).map(Item::Dec).unwrap_or_else(|| self.clone()),
            },
            ("date", Value::String(s)) => Temporal::parse(s, false).map(Item::Date).unwrap_or(Item::Str(s.clone())),
            ("dateTime" | "instant", Value::String(s)) => {
                Temporal::parse(s, false).map(Item::DateTime).unwrap_or(Item::Str(s.clone()))
            }
            ("time", Value::String(s)) => Temporal::parse(s, true).map(Item::Time).unwrap_or(Item::Str(s.clone())),
            (_, Value::String(s)) => Item::Str(s.clone()),
            (
                "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity" | "MoneyQuantity",
                Value::Object(o),
            ) => {
                let amount = o.get("value").and_then(|v| v.as_number()).and_then(decimal_of);
                let unit = o.get("code").or_else(|| o.get("unit")).and_then(Value::as_str).unwrap_or("1");
                match amount {
                    Some(amount) => Item::Quantity(amount, unit.to_string()),
                    None => self.clone(),
                }
            }
            _ => self.clone(),
        }
    }

    /// The item as a string, if it is one (or a primitive node holding one).
    pub fn as_str(&self) -> Option<String> {
        match self.to_system() {
            Item::Str(s) => Some(s),
            _ => None,
        }
    }

    /// FHIRPath `=`: `None` when the result is empty (different precisions).
    pub fn equals(&self, other: &Item<'_>) -> Option<bool> {
        match (self.to_system(), other.to_system()) {
            (Item::Node(a), Item::Node(b)) => Some(a.value == b.value && a.value.is_some()),
            (Item::Bool(a), Item::Bool(b)) => Some(a == b),
            (Item::Str(a), Item::Str(b)) => Some(a == b),
            (a, b) if a.number().is_some() && b.number().is_some() => Some(a.number() == b.number()),
            (Item::Quantity(a, u), Item::Quantity(b, v)) => in_one_unit(a, &u, b, &v).map(|(a, b)| a == b),
            (a, b) => match (a.temporal(), b.temporal()) {
                (Some(a), Some(b)) if a.time_only != b.time_only => Some(false),
                (Some(a), Some(b)) => a.compare(&b).map(|o| o == Ordering::Equal),
                (Some(t), None) | (None, Some(t)) => {
                    let text = if let Some(text) = a.as_text() { text } else { b.as_text()? };
                    let parsed = Temporal::parse(&text, t.time_only)?;
                    parsed.compare(&t).map(|o| o == Ordering::Equal)
                }
                _ => Some(false),
            },
        }
    }

    /// FHIRPath `~`.
    pub fn equivalent(&self, other: &Item<'_>) -> bool {
        match (self.to_system(), other.to_system()) {
            (Item::Str(a), Item::Str(b)) => normalize_space(&a).eq_ignore_ascii_case(&normalize_space(&b)),
            (Item::Dec(a), b) | (b, Item::Dec(a)) if b.number().is_some() => {
                let scale = a.scale().min(b.number().map_or(0, |n| n.scale()));
                a.round_dp(scale) == b.number().unwrap_or_default().round_dp(scale)
            }
            (a, b) => match (a.temporal(), b.temporal()) {
                (Some(a), Some(b)) => a.compare(&b) == Some(Ordering::Equal),
                _ => a.equals(&b).unwrap_or(false),
            },
        }
    }

    /// FHIRPath ordering, `None` when the two do not compare.
    pub fn compare(&self, other: &Item<'_>) -> Option<Ordering> {
        match (self.to_system(), other.to_system()) {
            (Item::Str(a), Item::Str(b)) => Some(a.cmp(&b)),
            (a, b) if a.number().is_some() && b.number().is_some() => a.number()?.partial_cmp(&b.number()?),
            (Item::Quantity(a, u), Item::Quantity(b, v)) => {
                in_one_unit(a, &u, b, &v).and_then(|(a, b)| a.partial_cmp(&b))
            }
            (a, b) => match (a.temporal(), b.temporal()) {
                (Some(a), Some(b)) => a.compare(&b),
                (Some(t), None) => Temporal::parse(&b.as_text()?, t.time_only).and_then(|b| t.compare(&b)),
                (None, Some(t)) => Temporal::parse(&a.as_text()?, t.time_only).and_then(|a| a.compare(&t)),
                _ => None,
            },
        }
    }

    /// The number of an Integer or Decimal.
    pub fn number(&self) -> Option<Decimal> {
        match self {
            Item::Int(i) => Some(Decimal::from(*i)),
            Item::Dec(d) => Some(*d),
            _ => None,
        }
    }

    fn temporal(&self) -> Option<Temporal> {
        match self {
            Item::Date(t) | Item::DateTime(t) | Item::Time(t) => Some(t.clone()),
            _ => None,
        }
    }

    fn as_text(&self) -> Option<String> {
        match self {
            Item::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// The dimension of a unit and its factor to that dimension's base unit, for the common units
/// quantities are compared in (no full UCUM: other units compare only with themselves).
fn unit_scale(unit: &str) -> Option<(&'static str, Decimal)> {
    let scale = |text: &str| Decimal::from_str(text).ok();
    let (dimension, factor) = match canonical_unit(unit) {
        "kg" => ("mass", "1000"),
        "g" => ("mass", "1"),
        "mg" => ("mass", "0.001"),
        "ug" => ("mass", "0.000001"),
        "km" => ("length", "1000"),
        "m" => ("length", "1"),
        "cm" => ("length", "0.01"),
        "mm" => ("length", "0.001"),
        "wk" => ("time", "604800"),
        "d" => ("time", "86400"),
        "h" => ("time", "3600"),
        "min" => ("time", "60"),
        "s" => ("time", "1"),
        "ms" => ("time", "0.001"),
        "L" => ("volume", "1"),
        "dL" => ("volume", "0.1"),
        "mL" => ("volume", "0.001"),
        _ => return None,
    };
    Some((dimension, scale(factor)?))
}

/// Two quantities in one unit, when they can be: `None` when their units do not convert.
pub fn in_one_unit(a: Decimal, u: &str, b: Decimal, v: &str) -> Option<(Decimal, Decimal)> {
    if canonical_unit(u) == canonical_unit(v) {
        return Some((a, b));
    }
    let ((d1, f1), (d2, f2)) = (unit_scale(u)?, unit_scale(v)?);
    (d1 == d2).then(|| (a * f1, b * f2))
}

/// An exact decimal of a JSON number.
pub fn decimal_of(number: &serde_json::Number) -> Option<Decimal> {
    let text = number.as_str();
    Decimal::from_str(text).or_else(|_| Decimal::from_scientific(text)).ok()
}

fn normalize_space(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_compare_to_their_shared_precision() {
        let date = |s| Temporal::parse(s, false).unwrap();
        assert_eq!(date("2015-02-04").compare(&date("2015-02-05")), Some(Ordering::Less));
        assert_eq!(date("2015-02").compare(&date("2015-02-04")), None);
        assert_eq!(date("2015").compare(&date("2016-02-04")), Some(Ordering::Less));
        assert_eq!(
            date("2015-02-04T14:00:00+02:00").compare(&date("2015-02-04T12:00:00Z")),
            Some(Ordering::Equal),
            "the same instant in two zones"
        );
        assert!(Temporal::parse("2015-13", false).is_none());
        let time = |s| Temporal::parse(s, true).unwrap();
        assert_eq!(time("10:00").compare(&time("09:59")), Some(Ordering::Greater));
    }
}
