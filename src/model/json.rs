//! JSON as FHIR accepts it: RFC 8259 leaves objects with duplicate keys to the parser, and
//! serde_json keeps the last value silently, so a resource could say two things at once and be
//! stored as one of them. FHIR JSON has no duplicate keys (R4 json.html): such a body is refused.

use std::borrow::Cow;
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
    NoDuplicates { path: &mut Vec::new() }.deserialize(&mut deserializer).map_err(invalid)?;
    Ok(value)
}

/// [`parse`] of text.
pub fn parse_str(text: &str) -> Result<Value, FhirError> {
    parse(text.as_bytes())
}

/// One step of a JSON pointer.
enum Step<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

/// The JSON pointer of `path` (`/a/1/c`).
fn pointer(path: &[Step<'_>]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) => text.push_str(&format!("/{key}")),
            Step::Index(index) => text.push_str(&format!("/{index}")),
        }
    }
    text
}

/// Walks a document, failing at the first object that repeats a key. `path` is where the walk
/// is, kept as steps and spelled out only for the error, so that a document without
/// duplicates costs no allocation per node.
struct NoDuplicates<'p, 'de> {
    path: &'p mut Vec<Step<'de>>,
}

impl<'de> DeserializeSeed<'de> for NoDuplicates<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// An object key, borrowed from the document unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(key.to_string()))
    }
}

impl<'de> Visitor<'de> for NoDuplicates<'_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let repeated = !seen.insert(key.clone());
            self.path.push(Step::Key(key));
            if repeated {
                let message = format!("the key at {} appears twice in its object", pointer(self.path));
                return Err(de::Error::custom(message));
            }
            map.next_value_seed(NoDuplicates { path: &mut *self.path })?;
            self.path.pop();
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            self.path.push(Step::Index(index));
            let more = seq.next_element_seed(NoDuplicates { path: &mut *self.path })?.is_some();
            self.path.pop();
            if !more {
                return Ok(());
            }
            index += 1;
        }
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
