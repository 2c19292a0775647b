//! The narrative's XHTML (R4 narrative.html, invariants txt-1 and txt-2): a `div` in the XHTML
//! namespace holding only the basic formatting elements of HTML 4 chapters 7–11 and 15, links
//! and images; no scripts, forms, frames, objects, event handler attributes or script URLs; and
//! some content.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

const XHTML: &str = "http://www.w3.org/1999/xhtml";

/// The elements a narrative may use.
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// URL schemes that run code when followed.
const SCRIPT_SCHEMES: &[&str] = &["javascript:", "vbscript:", "data:text/html"];

/// The problems of a narrative `div`, each with the invariant it breaks.
pub fn problems(div: &str) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let mut reader = Reader::from_str(div);
    let (mut depth, mut content) = (0usize, false);
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                problems.push(("txt-1", format!("the narrative is not well-formed XHTML: {error}")));
                return problems;
            }
        };
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                if depth == 0 {
                    root(element, &mut problems);
                }
                content |= element.name().as_ref() == b"img";
                element_problems(element, &mut problems);
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(text) => content |= text.iter().any(|b| !b.is_ascii_whitespace()),
            Event::CData(_) => content = true,
            Event::PI(_) | Event::DocType(_) => {
                problems.push(("txt-1", "the narrative has a processing instruction or doctype".into()))
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) => {}
        }
    }
    if !content {
        problems.push(("txt-2", "the narrative has no content".into()));
    }
    problems
}

fn root(element: &BytesStart<'_>, problems: &mut Vec<(&'static str, String)>) {
    let namespace = element
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == b"xmlns")
        .map(|a| String::from_utf8_lossy(&a.value).into_owned());
    if element.name().as_ref() != b"div" || namespace.as_deref() != Some(XHTML) {
        problems.push(("txt-1", format!("the narrative is a <div xmlns=\"{XHTML}\">")));
    }
}

fn element_problems(element: &BytesStart<'_>, problems: &mut Vec<(&'static str, String)>) {
    let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
    if !ELEMENTS.contains(&name.as_str()) {
        problems.push(("txt-1", format!("<{name}> is not allowed in a narrative")));
    }
    for attribute in element.attributes() {
        let Ok(attribute) = attribute else {
            problems.push(("txt-1", format!("<{name}> has a malformed attribute")));
            continue;
        };
        let key = String::from_utf8_lossy(attribute.key.as_ref()).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&attribute.value).trim().to_ascii_lowercase();
        if key.starts_with("on") {
            problems.push(("txt-1", format!("<{name}> has an event handler ({key}): no scripts in a narrative")));
        } else if SCRIPT_SCHEMES.iter().any(|scheme| value.starts_with(scheme)) {
            problems.push(("txt-1", format!("<{name}> {key} runs a script: no scripts in a narrative")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(div: &str) -> Vec<&'static str> {
        problems(div).into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn only_inert_xhtml_with_content() {
        let ok = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Ana <b>Lopez</b></p><a href=\"#x\">x</a></div>";
        assert!(keys(ok).is_empty());
        assert_eq!(keys("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script>x</div>"), ["txt-1"]);
        assert_eq!(keys("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x()\">x</p></div>"), ["txt-1"]);
        assert_eq!(
            keys("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\" JavaScript:x()\">x</a></div>"),
            ["txt-1"]
        );
        assert_eq!(keys("<div>no namespace</div>"), ["txt-1"]);
        assert_eq!(keys("<div xmlns=\"http://www.w3.org/1999/xhtml\">   </div>"), ["txt-2"]);
        assert_eq!(keys("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>unclosed</div>"), ["txt-1"]);
        assert!(keys("<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"#a\" alt=\"\"/></div>").is_empty());
    }
}
