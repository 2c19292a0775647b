//! FHIR R4 XML <-> JSON conversion for Hearth.
//!
//! This crate wraps [fhirbolt](https://docs.rs/fhirbolt) 0.4, which is expensive to
//! compile. Every fhirbolt call lives in the two non-generic functions below, so the
//! monomorphisation of its (de)serialisers happens once, in this crate, and the server
//! crate only sees bytes in and bytes out.
//!
//! Both directions go through the [`Resource`] enum rather than concrete resource
//! types: through the enum, decimals keep their lexical form (`185.50` stays
//! `185.50`), while concrete types reject JSON numbers in decimal fields.
//!
//! # What fhirbolt does, and what this crate adds
//!
//! - XML output always starts with `<?xml version="1.0" encoding="UTF-8"?>` and the
//!   root element carries `xmlns="http://hl7.org/fhir"`. Resources nested in a Bundle
//!   or in `contained` inherit that default namespace and get no `xmlns` of their own.
//! - fhirbolt always indents XML output by two spaces; compact output is produced
//!   here by re-emitting its events through quick-xml without indentation.
//! - fhirbolt's XML reader trims whitespace at the edges of every text node, including
//!   inside the XHTML narrative `div`, so `Hello <b>World</b>` reads back as
//!   `Hello<b>World</b>`.
//! - fhirbolt's XML reader rejects DOCTYPE declarations (so no entity expansion),
//!   processing instructions, CDATA sections and text outside the narrative `div`,
//!   and checks namespaces. It does *not* notice a document that stops before its
//!   root element is closed, and silently ignores unknown attributes; a quick-xml
//!   pre-pass here rejects both (see [`xml_to_json`]).
//! - fhirbolt (de)serialises recursively with large stack frames, and a deeply nested
//!   document would overflow the stack and abort the process. Both functions
//!   therefore refuse documents nested more deeply than [`MAX_XML_DEPTH`] /
//!   [`MAX_JSON_DEPTH`], and convert documents deeper than a small threshold on a
//!   short-lived thread with a large stack.
//! - fhirbolt checks structure (element names, cardinality of non-repeating
//!   elements, required elements, booleans, integers and decimals) but not the
//!   lexical form of most primitives: codes, dates and the like pass through as
//!   strings. Validate the converted JSON like any other incoming JSON.
//! - fhirbolt 0.4.0 panics on a namespace URI that is not UTF-8; input is checked to
//!   be UTF-8 first, and any other panic inside fhirbolt is caught and turned into a
//!   [`ConversionError`].

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::thread;

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};

/// Why a conversion failed, in words fit for an OperationOutcome diagnostics field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionError(pub String);

impl fmt::Display for ConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConversionError {}

/// Deepest element nesting [`xml_to_json`] accepts (the root element is depth 1).
///
/// The JSON form of an XML document can be up to twice as deep (a repeating element
/// becomes an array of objects), so this keeps converted documents within
/// [`MAX_JSON_DEPTH`].
pub const MAX_XML_DEPTH: usize = 64;

/// Deepest nesting of JSON objects and arrays [`json_to_xml`] accepts (the root object
/// is depth 1). This is also serde_json's own default recursion limit.
pub const MAX_JSON_DEPTH: usize = 128;

/// Documents up to this XML element depth are converted on the calling thread; deeper
/// ones on a thread with a [`BIG_STACK`]-byte stack. At this depth fhirbolt uses well
/// under 1 MiB of stack even in an unoptimised build, so callers on 2 MiB threads
/// (e.g. tokio workers) are safe.
const INLINE_XML_DEPTH: usize = 16;
/// As [`INLINE_XML_DEPTH`], for JSON nesting.
const INLINE_JSON_DEPTH: usize = 2 * INLINE_XML_DEPTH;
/// Stack size for deep documents. Only the pages actually touched are committed.
const BIG_STACK: usize = 16 << 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig { mode: DeserializationMode::Strict })
}

/// Parses a FHIR R4 XML resource (strict) and returns its FHIR JSON form as bytes.
///
/// Strict means that all of these are errors, reported with a message that names the
/// problem: malformed or truncated XML, input that is not UTF-8, content after the
/// root element, an unknown root resource type, unknown elements, attributes other
/// than `value`, `id`, `url` and `xmlns` on FHIR elements (including
/// `xsi:schemaLocation` and prefixed namespace declarations), elements outside the
/// FHIR namespace, a narrative `div` outside the XHTML namespace, DOCTYPE
/// declarations, processing instructions, CDATA, a repeated non-repeating element,
/// a missing required element, unparsable booleans, integers or decimals, and
/// nesting deeper than [`MAX_XML_DEPTH`]. A leading UTF-8 byte order mark, the XML
/// declaration, comments and whitespace between elements are accepted.
///
/// The JSON produced is compact, with elements in FHIR definition order. Decimals
/// keep their lexical form.
pub fn xml_to_json(xml: &[u8]) -> Result<Vec<u8>, ConversionError> {
    let xml = xml.strip_prefix(UTF8_BOM).unwrap_or(xml);
    let text = std::str::from_utf8(xml).map_err(|e| {
        ConversionError(format!("invalid FHIR XML: the document is not valid UTF-8 (byte {})", e.valid_up_to()))
    })?;
    if text.trim().is_empty() {
        return Err(empty("XML"));
    }
    let depth = check_xml(text)?;
    let convert = || -> Result<Vec<u8>, ConversionError> {
        let resource: Resource =
            fhirbolt::xml::from_str(text, strict()).map_err(|e| ConversionError(format!("invalid FHIR XML: {e}")))?;
        // Serialisation only fails on values fhirbolt kept as text without checking,
        // i.e. malformed decimals: a client error, not a server one.
        fhirbolt::json::to_vec(&resource, None)
            .map_err(|e| ConversionError(format!("invalid FHIR XML: {e} (not a valid number)")))
    };
    guarded(depth > INLINE_XML_DEPTH, convert)
}

/// Converts FHIR R4 JSON bytes (one resource, any type incl. Bundle) to XML; `pretty` indents.
///
/// The JSON is parsed in strict mode, so content fhirbolt does not know is an error
/// rather than being dropped silently; the server's own additions (`meta.versionId`,
/// `meta.lastUpdated`, Bundle `total`, `link`, `entry.fullUrl`, `entry.search`, ...)
/// are ordinary FHIR and pass. Nesting deeper than [`MAX_JSON_DEPTH`] is an error.
/// fhirbolt's strict JSON mode is still lenient in places that do not matter for
/// stored JSON: it accepts strings for booleans and integers, a single object where
/// an array belongs, repeated keys (the last wins) and anything after the resource.
///
/// The output always starts with `<?xml version="1.0" encoding="UTF-8"?>` and the
/// root element declares `xmlns="http://hl7.org/fhir"`. With `pretty` each element
/// is on its own line, indented by two spaces per level (inline narrative markup
/// stays on the line of the text it follows); without it the whole document follows
/// the declaration on one line.
pub fn json_to_xml(json: &[u8], pretty: bool) -> Result<String, ConversionError> {
    let json = json.strip_prefix(UTF8_BOM).unwrap_or(json);
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(empty("JSON"));
    }
    let depth = json_depth(json);
    if depth > MAX_JSON_DEPTH {
        return Err(ConversionError(format!(
            "invalid FHIR JSON: nested {depth} levels deep; at most {MAX_JSON_DEPTH} are supported"
        )));
    }
    let convert = || -> Result<Vec<u8>, ConversionError> {
        let resource: Resource = fhirbolt::json::from_slice(json, strict())
            .map_err(|e| ConversionError(format!("invalid FHIR JSON: {e}")))?;
        fhirbolt::xml::to_vec(&resource, None)
            .map_err(|e| ConversionError(format!("could not convert the resource to XML: {e}")))
    };
    // fhirbolt only writes indented XML (two spaces, fixed in its writer).
    let indented = guarded(depth > INLINE_JSON_DEPTH, convert)?;
    let bytes = if pretty { indented } else { compact(&indented)? };
    String::from_utf8(bytes).map_err(|e| ConversionError(format!("XML output is not valid UTF-8: {e}")))
}

fn empty(format: &str) -> ConversionError {
    ConversionError(format!("the request body is empty; expected a FHIR {format} resource"))
}

/// Runs a fhirbolt conversion, on a big-stack thread if the document is deep, and
/// turns a panic inside fhirbolt into an error instead of unwinding into the caller.
fn guarded<F>(deep: bool, convert: F) -> Result<Vec<u8>, ConversionError>
where
    F: FnOnce() -> Result<Vec<u8>, ConversionError> + Send,
{
    let crashed = || ConversionError("the FHIR converter failed on this document".to_owned());
    if !deep {
        return panic::catch_unwind(AssertUnwindSafe(convert)).unwrap_or_else(|_| Err(crashed()));
    }
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("fhir-xml".to_owned())
            .stack_size(BIG_STACK)
            .spawn_scoped(scope, convert)
            .map_err(|e| ConversionError(format!("could not start a converter thread: {e}")))?;
        worker.join().unwrap_or_else(|_| Err(crashed()))
    })
}

/// Largest nesting depth of objects and arrays in (possibly malformed) JSON.
fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    max
}

/// Checks what fhirbolt's XML reader lets through or reports obscurely:
/// well-formedness to the end of the document (fhirbolt accepts a document cut off
/// before the root element closes), a single root element, the nesting limit,
/// attributes (fhirbolt silently drops unknown ones, and says "invalid XML namespace
/// xmlns" for prefixed namespace declarations) and stray text (fhirbolt says "text
/// outside of div"). Everything else is left to fhirbolt. Returns the maximum
/// element depth.
fn check_xml(xml: &str) -> Result<usize, ConversionError> {
    let mut reader = Reader::from_str(xml);
    reader.trim_text(true);
    let mut open: Vec<String> = Vec::new();
    // Depth of the narrative `div` while inside it (XHTML allows other attributes).
    let mut div_depth: Option<usize> = None;
    let (mut max_depth, mut root_closed) = (0usize, false);
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| ConversionError(format!("invalid FHIR XML: {e} (near byte {position})")))?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                if root_closed {
                    return Err(ConversionError(format!(
                        "invalid FHIR XML: element <{name}> after the end of the root element"
                    )));
                }
                let depth = open.len() + 1;
                if depth > MAX_XML_DEPTH {
                    return Err(ConversionError(format!(
                        "invalid FHIR XML: elements are nested more than {MAX_XML_DEPTH} levels deep"
                    )));
                }
                max_depth = max_depth.max(depth);
                let is_div = div_depth.is_none() && start.local_name().as_ref() == b"div";
                if div_depth.is_none() && !is_div {
                    check_fhir_attributes(start, &name)?;
                }
                if let Event::Start(_) = event {
                    if is_div {
                        div_depth = Some(depth);
                    }
                    open.push(name);
                } else if open.is_empty() {
                    root_closed = true;
                }
            }
            Event::End(_) => {
                // quick-xml has already checked that the name matches.
                if div_depth == Some(open.len()) {
                    div_depth = None;
                }
                open.pop();
                if open.is_empty() {
                    root_closed = true;
                }
            }
            // Whitespace-only text has been trimmed away by the reader.
            Event::Text(_) if div_depth.is_none() => {
                return Err(ConversionError(match open.last() {
                    Some(name) => format!(
                        "invalid FHIR XML: unexpected text inside <{name}>; FHIR elements \
                         carry values in 'value' attributes, text is only allowed in the \
                         narrative div"
                    ),
                    None => "invalid FHIR XML: text outside the root element".to_owned(),
                }));
            }
            Event::Eof => break,
            // Comments, the declaration, DOCTYPE, PIs and CDATA: fhirbolt decides.
            _ => {}
        }
    }
    match open.last() {
        Some(name) => {
            Err(ConversionError(format!("invalid FHIR XML: the document ends before element <{name}> is closed")))
        }
        None if max_depth == 0 => Err(ConversionError("invalid FHIR XML: the document has no root element".to_owned())),
        None => Ok(max_depth),
    }
}

/// FHIR elements carry only `value` (primitives), `id` and `url` (extensions), plus
/// the default namespace declaration.
fn check_fhir_attributes(start: &BytesStart, element: &str) -> Result<(), ConversionError> {
    for attribute in start.attributes() {
        let attribute = attribute
            .map_err(|e| ConversionError(format!("invalid FHIR XML: bad attribute on element <{element}>: {e}")))?;
        let key = attribute.key.as_ref();
        if matches!(key, b"value" | b"id" | b"url" | b"xmlns") {
            continue;
        }
        let key = String::from_utf8_lossy(key);
        let hint = if key.contains(':') {
            "; namespace prefixes and schema hints such as xsi:schemaLocation are not \
             supported, declare the FHIR namespace as xmlns=\"http://hl7.org/fhir\""
        } else {
            ""
        };
        return Err(ConversionError(format!(
            "invalid FHIR XML: unknown attribute '{key}' on element <{element}>; \
             FHIR elements only carry 'value', 'id' and 'url'{hint}"
        )));
    }
    Ok(())
}

/// Re-emits fhirbolt's indented XML without the indentation.
///
/// fhirbolt's XML writer trims every text node and only ever adds whitespace-only
/// text nodes for indentation, so dropping whitespace-only text (what quick-xml's
/// `trim_text` does) removes exactly the indentation and nothing else. Events are
/// passed through with their raw, still-escaped bytes.
fn compact(indented: &[u8]) -> Result<Vec<u8>, ConversionError> {
    let mut reader = Reader::from_reader(indented);
    reader.trim_text(true);
    let mut writer = Writer::new(Vec::with_capacity(indented.len()));
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| ConversionError(format!("could not re-read generated XML: {e}")))?;
        if let Event::Eof = event {
            break;
        }
        writer.write_event(&event).map_err(|e| ConversionError(format!("could not write XML: {e}")))?;
        buf.clear();
    }
    Ok(writer.into_inner())
}
