//! What a primitive value must be beyond the shape the JSON schema's regexes give it: a date
//! that is in the calendar, an integer that fits 32 bits, base64 that decodes, a string within
//! the 1 MB the specification allows.

use base64::Engine;
use serde_json::Value;

/// The most bytes a string may have (R4 §2.24.0.1, "strings SHALL NOT exceed 1MB").
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Why `value`, of primitive type `type_code`, is not a valid value of it (`None`: it is).
pub fn problem(type_code: &str, value: &Value) -> Option<String> {
    match (type_code, value) {
        ("integer", Value::Number(n)) => int32(n, i64::from(i32::MIN)),
        ("unsignedInt", Value::Number(n)) => int32(n, 0),
        ("positiveInt", Value::Number(n)) => int32(n, 1),
        ("date" | "dateTime" | "instant", Value::String(text)) => calendar_date(text),
        ("base64Binary", Value::String(text)) => base64(text),
        (_, Value::String(text)) if text.len() > MAX_STRING_BYTES => {
            Some(format!("a string of {} bytes is longer than the 1 MB FHIR allows", text.len()))
        }
        _ => None,
    }
}

fn int32(number: &serde_json::Number, min: i64) -> Option<String> {
    match number.as_i64() {
        Some(n) if (min..=i64::from(i32::MAX)).contains(&n) => None,
        _ => Some(format!("{number} is not an integer between {min} and {}", i32::MAX)),
    }
}

/// A date (or the date of a dateTime or instant) whose day exists in its month.
fn calendar_date(text: &str) -> Option<String> {
    let number = |range: std::ops::Range<usize>| text.get(range).and_then(|s| s.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else { return None };
    // A month the regex let through but that does not exist is the regex's to refuse.
    let days = time::Month::try_from(month as u8).map_or(31, |month| u32::from(month.length(year as i32)));
    (day > days).then(|| format!("'{text}' is not a date: {year}-{month:02} has {days} days"))
}

fn base64(text: &str) -> Option<String> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).err().map(|_| "not valid base64".to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_checked_beyond_their_shape() {
        assert!(problem("date", &json!("2023-02-30")).is_some());
        assert!(problem("dateTime", &json!("2023-04-31T10:00:00Z")).is_some());
        assert_eq!(problem("date", &json!("2024-02-29")), None, "a leap day");
        assert!(problem("date", &json!("1900-02-29")).is_some(), "1900 was no leap year");
        assert_eq!(problem("date", &json!("2023-02")), None);
        assert!(problem("integer", &json!(2147483648u64)).is_some());
        assert_eq!(problem("integer", &json!(-2147483648i64)), None);
        assert!(problem("positiveInt", &json!(0)).is_some());
        assert!(problem("base64Binary", &json!("A===")).is_some());
        assert_eq!(problem("base64Binary", &json!("aGVs\nbG8=")), None);
        assert!(problem("string", &json!("x".repeat(MAX_STRING_BYTES + 1))).is_some());
    }
}
