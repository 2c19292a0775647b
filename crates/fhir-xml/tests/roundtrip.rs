//! Round-trip and error-path tests for the XML <-> JSON conversion.

use std::time::Instant;

use fhir_xml::{json_to_xml, xml_to_json, ConversionError};
use serde_json::{json, Value};

const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "example",
        "meta": {
            "versionId": "3",
            "lastUpdated": "2024-05-01T12:34:56.789Z"
        },
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueCode": "F"
            },
            {
                "url": "http://example.org/fhir/StructureDefinition/complex",
                "extension": [
                    { "url": "flag", "valueBoolean": true },
                    { "url": "note", "valueString": "a < b & \"c\" > 'd'" }
                ]
            }
        ],
        "identifier": [{ "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345" }],
        "active": true,
        "name": [
            { "use": "official", "family": "Chalmers", "given": ["Peter", "James"] },
            { "use": "usual", "given": ["Jim"] }
        ],
        "gender": "female",
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "1974-12-25T14:35:45-05:00"
            }]
        },
        "deceasedBoolean": false,
        "multipleBirthInteger": 2
    })
}

fn observation() -> Value {
    // Raw text, not json!(): a Rust literal 185.50 would already be the f64 185.5.
    serde_json::from_str(
        r#"{
            "resourceType": "Observation",
            "id": "height",
            "status": "final",
            "code": {
                "coding": [{ "system": "http://loinc.org", "code": "8302-2", "display": "Body height" }]
            },
            "subject": { "reference": "Patient/example" },
            "effectiveDateTime": "2024-01-01",
            "valueQuantity": {
                "value": 185.50,
                "unit": "cm",
                "system": "http://unitsofmeasure.org",
                "code": "cm"
            },
            "component": [
                { "code": { "text": "tiny" }, "valueQuantity": { "value": 0.000100 } },
                { "code": { "text": "huge" }, "valueQuantity": { "value": 12345678901234567890.10 } },
                { "code": { "text": "exp" }, "valueQuantity": { "value": 1.0e-3 } },
                { "code": { "text": "neg" }, "valueQuantity": { "value": -0.50 } },
                { "code": { "text": "int" }, "valueInteger": 7 }
            ]
        }"#,
    )
    .unwrap()
}

fn bundle() -> Value {
    json!({
        "resourceType": "Bundle",
        "id": "b1",
        "meta": { "lastUpdated": "2024-05-01T12:34:56Z" },
        "type": "searchset",
        "total": 2,
        "link": [{ "relation": "self", "url": "http://localhost/Patient?_count=2" }],
        "entry": [
            {
                "fullUrl": "http://localhost/Patient/example",
                "resource": patient(),
                "search": { "mode": "match" }
            },
            {
                "fullUrl": "http://localhost/Observation/height",
                "resource": observation(),
                "search": { "mode": "include" }
            },
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{
                        "severity": "warning",
                        "code": "processing",
                        "diagnostics": "unknown search parameter 'foo' ignored"
                    }]
                },
                "search": { "mode": "outcome" }
            }
        ]
    })
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// JSON -> XML -> JSON, asserting both XML flavours come back to the same JSON.
fn roundtrip(v: &Value) -> Value {
    let pretty = json_to_xml(&to_bytes(v), true).expect("json_to_xml (pretty)");
    let compact = json_to_xml(&to_bytes(v), false).expect("json_to_xml (compact)");
    let from_pretty: Value =
        serde_json::from_slice(&xml_to_json(pretty.as_bytes()).unwrap()).expect("xml_to_json output is JSON");
    let from_compact: Value = serde_json::from_slice(&xml_to_json(compact.as_bytes()).unwrap()).unwrap();
    assert_eq!(from_pretty, from_compact);
    from_pretty
}

fn err_of(r: Result<Vec<u8>, ConversionError>) -> String {
    match r {
        Ok(json) => panic!("expected an error, got {}", String::from_utf8_lossy(&json)),
        Err(e) => e.to_string(),
    }
}

#[test]
fn patient_roundtrips() {
    let p = patient();
    assert_eq!(roundtrip(&p), p);
}

#[test]
fn observation_decimal_keeps_lexical_form() {
    let o = observation();
    let xml = json_to_xml(&to_bytes(&o), false).unwrap();
    assert!(xml.contains(r#"<value value="185.50"/>"#), "{xml}");
    assert!(xml.contains(r#"<value value="0.000100"/>"#), "{xml}");
    assert!(xml.contains(r#"<value value="12345678901234567890.10"/>"#), "{xml}");
    assert!(xml.contains(r#"<value value="-0.50"/>"#), "{xml}");
    let back = roundtrip(&o);
    assert_eq!(back, o);
    // With arbitrary_precision, Value equality is already lexical; check the text anyway.
    let text = String::from_utf8(xml_to_json(xml.as_bytes()).unwrap()).unwrap();
    assert!(text.contains(r#""value":185.50"#), "{text}");
    assert!(text.contains(r#""value":0.000100"#), "{text}");
}

#[test]
fn xml_decimal_keeps_lexical_form() {
    let xml = br#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="185.50"/></valueQuantity></Observation>"#;
    let text = String::from_utf8(xml_to_json(xml).unwrap()).unwrap();
    assert_eq!(
        text,
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":185.50}}"#
    );
}

#[test]
fn bundle_roundtrips() {
    let b = bundle();
    assert_eq!(roundtrip(&b), b);
}

#[test]
fn resource_type_need_not_come_first() {
    let json = br#"{"id":"x","gender":"male","resourceType":"Patient"}"#;
    let xml = json_to_xml(json, false).unwrap();
    assert!(xml.contains(r#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/>"#));
}

#[test]
fn narrative_and_contained_roundtrip() {
    let v = json!({
        "resourceType": "Patient",
        "id": "n",
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter <b>Chalmers</b></p><p>born 1974</p></div>"
        },
        "contained": [{ "resourceType": "Organization", "id": "org", "name": "ACME" }],
        "managingOrganization": { "reference": "#org" }
    });
    let xml = json_to_xml(&to_bytes(&v), true).unwrap();
    assert!(xml.contains(r#"<div xmlns="http://www.w3.org/1999/xhtml">"#), "{xml}");
    let back = roundtrip(&v);
    // Everything survives except whitespace at the edges of narrative text nodes,
    // which fhirbolt trims ("Peter <b>" becomes "Peter<b>").
    let mut expected = v.clone();
    expected["text"]["div"] =
        json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter<b>Chalmers</b></p><p>born 1974</p></div>");
    assert_eq!(back, expected);
}

#[test]
fn xml_output_has_declaration_and_namespace() {
    for pretty in [true, false] {
        let xml = json_to_xml(&to_bytes(&bundle()), pretty).unwrap();
        assert!(xml.starts_with(DECL), "{xml}");
        assert!(xml.contains(r#"<Bundle xmlns="http://hl7.org/fhir">"#), "{xml}");
        // Nested resources inherit the default namespace.
        assert!(xml.contains("<Patient>"), "{xml}");
        assert_eq!(xml.matches("xmlns=").count(), 1, "{xml}");
    }
}

#[test]
fn pretty_indents_and_compact_does_not() {
    let o = to_bytes(&observation());
    let pretty = json_to_xml(&o, true).unwrap();
    let compact = json_to_xml(&o, false).unwrap();
    assert!(pretty.contains("\n  <status value=\"final\"/>"), "{pretty}");
    assert!(pretty.contains("\n    <coding>"), "{pretty}");
    assert_eq!(compact.lines().count(), 1, "{compact}");
    assert!(compact.starts_with(&format!(
        "{DECL}<Observation xmlns=\"http://hl7.org/fhir\"><id value=\"height\"/><status value=\"final\"/>"
    )));
    assert!(compact.ends_with("</Observation>"), "{compact}");
}

#[test]
fn xml_escaping_roundtrips() {
    let v = json!({
        "resourceType": "Patient",
        "name": [{ "text": "O'Brien <\"Jr\"> & Sons \u{e9}\u{1F600}" }]
    });
    let compact = json_to_xml(&to_bytes(&v), false).unwrap();
    assert!(!compact.contains("<\"Jr"), "{compact}");
    assert_eq!(roundtrip(&v), v);
}

#[test]
fn xml_input_with_whitespace_comments_and_bom() {
    let xml = "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <!-- a comment -->\n\
        <Patient xmlns=\"http://hl7.org/fhir\">\n  <id value=\"p1\"/>\n  \
        <!-- inner -->\n  <active value=\"true\"/>\n</Patient>\n";
    let json: Value = serde_json::from_slice(&xml_to_json(xml.as_bytes()).unwrap()).unwrap();
    assert_eq!(json, json!({ "resourceType": "Patient", "id": "p1", "active": true }));
    // The declaration is optional.
    let json: Value = serde_json::from_slice(
        &xml_to_json(br#"<Patient xmlns="http://hl7.org/fhir"><id value="p2"/></Patient>"#).unwrap(),
    )
    .unwrap();
    assert_eq!(json, json!({ "resourceType": "Patient", "id": "p2" }));
}

#[test]
fn unknown_element_is_an_error() {
    let e =
        err_of(xml_to_json(br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/><colour value="blue"/></Patient>"#));
    assert!(e.contains("colour"), "{e}");
    println!("unknown element: {e}");
}

#[test]
fn unknown_attribute_is_an_error() {
    let e = err_of(xml_to_json(br#"<Patient xmlns="http://hl7.org/fhir"><id value="x" colour="blue"/></Patient>"#));
    assert!(e.contains("colour") && e.contains("<id>"), "{e}");
    // Schema hints are refused with an explanation rather than fhirbolt's
    // "invalid XML namespace xmlns".
    let e = err_of(xml_to_json(
        br#"<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir patient.xsd"><id value="x"/></Patient>"#,
    ));
    assert!(e.contains("xmlns:xsi") && e.contains("schemaLocation"), "{e}");
    // Attributes inside the XHTML narrative are not FHIR's business.
    let ok = xml_to_json(
        br#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml" class="x"><p style="color:red" lang="en">hi</p></div></text></Patient>"#,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn unknown_resource_type_is_an_error() {
    let e = err_of(xml_to_json(br#"<Patientt xmlns="http://hl7.org/fhir"><id value="x"/></Patientt>"#));
    println!("unknown resource type: {e}");
}

#[test]
fn wrong_namespace_is_an_error() {
    let e = err_of(xml_to_json(br#"<Patient><id value="x"/></Patient>"#));
    assert!(e.contains("namespace"), "{e}");
    let e = err_of(xml_to_json(br#"<Patient xmlns="http://hl7.org/fhir/"><id value="x"/></Patient>"#));
    assert!(e.contains("namespace"), "{e}");
}

#[test]
fn bad_primitive_values_are_errors() {
    // Not a boolean.
    err_of(xml_to_json(br#"<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>"#));
    // Not an integer.
    err_of(xml_to_json(br#"<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="two"/></Patient>"#));
}

#[test]
fn malformed_xml_is_an_error() {
    let cases: &[(&[u8], &str)] = &[
        // fhirbolt alone accepts this one.
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/>"#, "ends before element <Patient> is closed"),
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"></Patient>"#, "Expecting </id> found </Patient>"),
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="x/></Patient>"#, ""),
        (
            br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/></Patient><Patient/>"#,
            "after the end of the root element",
        ),
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/></Patient>trailing"#, "text outside the root element"),
        (br#"<Patient xmlns="http://hl7.org/fhir">text<id value="x"/></Patient>"#, "unexpected text inside <Patient>"),
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="&bogus;"/></Patient>"#, "bogus"),
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="a" value="b"/></Patient>"#, ""),
        (br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/><id value="y"/></Patient>"#, "duplicate field `id`"),
        (b"<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"\xff\xfe\"/></Patient>", "UTF-8"),
        // Non-UTF-8 namespace URI: makes fhirbolt 0.4.0 panic if it gets that far.
        (b"<Patient xmlns=\"http://hl7.org/\xff\"/>", "UTF-8"),
        (b"{\"resourceType\":\"Patient\"}", "text outside the root element"),
        (b"<", ""),
        (b"</Patient>", ""),
        (b"<!-- only a comment -->", "no root element"),
        (b"not xml at all", "text outside the root element"),
    ];
    for (case, expected) in cases {
        let e = err_of(xml_to_json(case));
        println!("{:?} => {e}", String::from_utf8_lossy(case));
        assert!(e.starts_with("invalid FHIR XML: "), "{e}");
        assert!(e.contains(expected), "{e}");
    }
}

#[test]
fn too_deep_is_an_error_not_a_crash() {
    fn nested(depth: usize) -> String {
        let mut s = String::from(r#"<Patient xmlns="http://hl7.org/fhir">"#);
        s.push_str(&r#"<extension url="u">"#.repeat(depth));
        s.push_str(r#"<valueString value="x"/>"#);
        s.push_str(&"</extension>".repeat(depth));
        s.push_str("</Patient>");
        s
    }
    // Deep but allowed documents convert, both ways (on the big-stack thread).
    let deepest = nested(fhir_xml::MAX_XML_DEPTH - 2);
    let json = xml_to_json(deepest.as_bytes()).unwrap();
    let back = json_to_xml(&json, true).unwrap();
    assert_eq!(xml_to_json(back.as_bytes()).unwrap(), json);
    // One more level is refused.
    let e = err_of(xml_to_json(nested(fhir_xml::MAX_XML_DEPTH).as_bytes()));
    assert!(e.contains("nested more than"), "{e}");
    // A hostile one is refused without overflowing the stack.
    let e = err_of(xml_to_json(nested(100_000).as_bytes()));
    assert!(e.contains("nested more than"), "{e}");

    let mut deep_json = String::from(r#"{"resourceType":"Patient","extension":"#);
    deep_json.push_str(&r#"[{"url":"u","extension":"#.repeat(100_000));
    let e = json_to_xml(deep_json.as_bytes(), false).unwrap_err().0;
    assert!(e.contains("levels deep"), "{e}");
}

#[test]
fn shallow_documents_fit_a_small_stack() {
    // Documents up to the inline threshold are converted on the caller's thread;
    // make sure that is comfortable on a 1 MiB stack (tokio workers have 2 MiB).
    let mut xml = String::from(r#"<Patient xmlns="http://hl7.org/fhir">"#);
    xml.push_str(&r#"<extension url="u">"#.repeat(15));
    xml.push_str(r#"<valueString value="x"/>"#);
    xml.push_str(&"</extension>".repeat(15));
    xml.push_str("</Patient>");
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let json = xml_to_json(xml.as_bytes()).unwrap();
            json_to_xml(&json, false).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn doctype_and_entities_are_rejected() {
    let xxe = br#"<?xml version="1.0"?>
<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><id value="&xxe;"/></Patient>"#;
    let e = err_of(xml_to_json(xxe));
    println!("doctype: {e}");
}

#[test]
fn empty_input_is_an_error() {
    for input in [&b""[..], b"   \n\t", b"\xEF\xBB\xBF"] {
        let e = err_of(xml_to_json(input));
        assert!(e.contains("empty"), "{e}");
        let e = json_to_xml(input, true).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}

#[test]
fn bad_json_is_an_error() {
    let cases: &[&[u8]] = &[
        b"{",
        b"[]",
        b"42",
        b"{}",
        br#"{"resourceType":"NoSuchThing"}"#,
        br#"{"resourceType":"Patient","colour":"blue"}"#,
        br#"{"resourceType":"Observation","valueQuantity":{"value":1}}"#,
        br#"{"resourceType":"Patient","active":1}"#,
        br#"{"resourceType":"Patient","multipleBirthInteger":"two"}"#,
        b"<Patient xmlns=\"http://hl7.org/fhir\"/>",
    ];
    for case in cases {
        match json_to_xml(case, false) {
            Ok(xml) => panic!("{:?} converted to {xml}", String::from_utf8_lossy(case)),
            Err(e) => {
                println!("{:?} => {e}", String::from_utf8_lossy(case));
                assert!(e.0.starts_with("invalid FHIR JSON: "), "{e}");
            }
        }
    }
}

#[test]
fn fhirbolt_json_leniency() {
    // Documents what fhirbolt 0.4 strict mode lets through (the server's JSON
    // validation is the place to catch these). If one of these starts failing,
    // fhirbolt got stricter: update the report/docs, not the code.
    let lenient: &[(&[u8], &str)] = &[
        // A single object where an array is required.
        (br#"{"resourceType":"Patient","name":{"family":"x"}}"#, "<name><family value=\"x\"/></name>"),
        // Strings where a boolean or an integer is required.
        (br#"{"resourceType":"Patient","multipleBirthInteger":"2"}"#, "<multipleBirthInteger value=\"2\"/>"),
        (br#"{"resourceType":"Patient","active":"true"}"#, "<active value=\"true\"/>"),
        // Anything after the resource is not looked at.
        (br#"{"resourceType":"Patient"} trailing"#, "<Patient xmlns=\"http://hl7.org/fhir\"></Patient>"),
        // A repeated key: the last one wins.
        (br#"{"resourceType":"Patient","id":"x","id":"y"}"#, "<id value=\"y\"/>"),
    ];
    for (json, xml) in lenient {
        let out = json_to_xml(json, false).unwrap();
        assert!(out.contains(xml), "{out}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: truncations and single-byte corruptions of valid
    // documents must give Ok or Err, never a panic.
    let xml = json_to_xml(&to_bytes(&bundle()), true).unwrap().into_bytes();
    let json = to_bytes(&bundle());
    for doc in [&xml, &json] {
        for cut in (0..doc.len()).step_by(7) {
            let _ = xml_to_json(&doc[..cut]);
            let _ = json_to_xml(&doc[..cut], false);
        }
        for i in (0..doc.len()).step_by(13) {
            for b in [b'<', b'>', b'"', b'&', b'/', 0xff, b'x'] {
                let mut bad = doc.clone();
                bad[i] = b;
                let _ = xml_to_json(&bad);
                let _ = json_to_xml(&bad, true);
            }
        }
    }
}

#[test]
fn timing_json_to_xml_patient() {
    // Not an assertion, just a figure: run with --release --nocapture for real numbers.
    let n: u32 = if cfg!(debug_assertions) { 200 } else { 5000 };
    let p = to_bytes(&patient());
    let b = to_bytes(&bundle());
    for (name, doc) in [("Patient", &p), ("Bundle(3 entries)", &b)] {
        for pretty in [true, false] {
            for _ in 0..n / 10 {
                json_to_xml(doc, pretty).unwrap();
            }
            let start = Instant::now();
            for _ in 0..n {
                std::hint::black_box(json_to_xml(std::hint::black_box(doc), pretty).unwrap());
            }
            println!("json_to_xml {name} ({} bytes, pretty={pretty}): {:?} per call", doc.len(), start.elapsed() / n);
        }
        let xml = json_to_xml(doc, false).unwrap();
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(xml_to_json(std::hint::black_box(xml.as_bytes())).unwrap());
        }
        println!("xml_to_json {name} ({} bytes): {:?} per call", xml.len(), start.elapsed() / n);
    }
}
