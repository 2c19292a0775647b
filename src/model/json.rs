//! JSON as FHIR accepts it: RFC 8259 leaves objects with duplicate keys to the parser, and
//! serde_json keeps the last value silently, so a resource could say two things at once and be
//! stored as one of them. FHIR JSON has no duplicate keys (R4 json.html): such a body is refused.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::Value;

use super::{ErrorKind, FhirError, IssueCode};

/// Parses a JSON document, refusing invalid JSON and objects with duplicate keys (400).
pub fn parse(bytes: &[u8]) -> Result<Value, FhirError> {
    let invalid = |e: serde_json::Error| {
        FhirError::new(ErrorKind::BadRequest, IssueCode::Structure, format!("invalid JSON: {e}"))
    };
    let value: Value = serde_json::from_slice(bytes).map_err(invalid)?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    NoDuplicates { path: String::new() }.deserialize(&mut deserializer).map_err(invalid)?;
    Ok(value)
}

/// [`parse`] of text.
pub fn parse_str(text: &str) -> Result<Value, FhirError> {
    parse(text.as_bytes())
}

/// Walks a document, failing at the first object that repeats a key; `path` is where it is
/// (a JSON pointer).
struct NoDuplicates {
    path: String,
}

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let path = format!("{}/{key}", self.path);
            if !seen.insert(key.into_owned()) {
                return Err(de::Error::custom(format!("the key at {path} appears twice in its object")));
            }
            map.next_value_seed(NoDuplicates { path })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq.next_element_seed(NoDuplicates { path: format!("{}/{index}", self.path) })?.is_some() {
            index += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_wherever_they_are() {
        assert!(parse(br#"{"resourceType":"Patient","gender":"male","gender":"female"}"#).is_err());
        let nested = parse(br#"{"a":[{"b":1},{"c":{"d":1,"d":2}}]}"#).unwrap_err();
        assert!(format!("{nested:?}").contains("/a/1/c/d"), "{nested:?}");
        let fine = parse(br#"{"a":{"b":1.50,"c":[1,2,{"b":2}]},"b":"x\"y"}"#).unwrap();
        assert_eq!(fine["a"]["b"].to_string(), "1.50", "numbers keep their precision");
        assert!(parse(b"{").is_err());
    }
}
