//! The official FHIRPath R4 test suite (`tests/data/tests-fhir-r4.xml`), evaluated without a
//! type model (types from the JSON alone). `FHIRPATH_FAILURES=1 cargo test -p fhirpath --test
//! official -- --nocapture` lists the tests that fail; the test fails when fewer pass than the
//! last recorded count, so a regression is seen.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value;

/// Tests passing when this was last measured (of 762); raise it as the engine grows.
const PASSING_AT_LEAST: usize = 718;

#[derive(Debug, Default)]
struct Case {
    name: String,
    input: String,
    /// Where the expression is evaluated (`Observation.effective`): each of its results is
    /// `$this`; the resource when absent.
    context: Option<String>,
    expression: String,
    invalid: bool,
    predicate: bool,
    outputs: Vec<(String, String)>,
}

fn cases() -> Vec<Case> {
    let xml = include_str!("data/tests-fhir-r4.xml");
    let mut reader = Reader::from_str(xml);
    let (mut cases, mut current, mut text, mut output_type) = (Vec::new(), None::<Case>, String::new(), String::new());
    let attribute = |e: &quick_xml::events::BytesStart<'_>, name: &str| {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == name.as_bytes())
            .map(|a| a.unescape_value().map(|v| v.into_owned()).unwrap_or_default())
    };
    loop {
        match reader.read_event().expect("the suite is XML") {
            Event::Start(e) => {
                text.clear();
                match e.name().as_ref() {
                    b"test" => {
                        current = Some(Case {
                            name: attribute(&e, "name").unwrap_or_default(),
                            input: attribute(&e, "inputfile").unwrap_or_default(),
                            context: attribute(&e, "context"),
                            predicate: attribute(&e, "predicate").as_deref() == Some("true"),
                            ..Case::default()
                        })
                    }
                    b"expression" => {
                        if let Some(case) = current.as_mut() {
                            case.invalid = attribute(&e, "invalid").is_some();
                        }
                    }
                    b"output" => output_type = attribute(&e, "type").unwrap_or_default(),
                    _ => {}
                }
            }
            Event::Text(t) => text.push_str(&t.unescape().map(|v| v.into_owned()).unwrap_or_default()),
            Event::End(e) => match e.name().as_ref() {
                b"expression" => current.as_mut().unwrap().expression = text.trim().to_string(),
                b"output" => current.as_mut().unwrap().outputs.push((output_type.clone(), text.trim().to_string())),
                b"test" => cases.extend(current.take()),
                _ => {}
            },
            Event::Empty(e) if e.name().as_ref() == b"output" => {}
            Event::Eof => break,
            _ => {}
        }
    }
    cases
}

fn input(name: &str) -> Value {
    let text = match name {
        "patient-example.json" => include_str!("data/input/patient-example.json"),
        "observation-example.json" => include_str!("data/input/observation-example.json"),
        "questionnaire-example.json" => include_str!("data/input/questionnaire-example.json"),
        "valueset-example-expansion.json" => include_str!("data/input/valueset-example-expansion.json"),
        "parameters-quantity-unit-text.json" => include_str!("data/input/parameters-quantity-unit-text.json"),
        other => panic!("no input {other}"),
    };
    serde_json::from_str(text).expect("inputs are JSON")
}

/// The result item as the suite writes outputs.
fn shown(item: &fhirpath::Item<'_>) -> String {
    use fhirpath::Item;
    let context_free = fhirpath::parse("toString()").unwrap();
    let resource = Value::Null;
    let context = fhirpath::Context::new(&resource, &fhirpath::NoModel);
    match item.to_system() {
        Item::Quantity(d, u) => format!("{d} '{u}'"),
        Item::Node(_) => "<node>".to_string(),
        other => context_free
            .evaluate(vec![other], &context)
            .ok()
            .and_then(|r| r.first().and_then(|i| i.as_str()))
            .unwrap_or_default(),
    }
}

fn passes(case: &Case) -> Result<(), String> {
    let resource = input(&case.input);
    let context = fhirpath::Context::new(&resource, &fhirpath::NoModel);
    let focus = match &case.context {
        Some(at) => fhirpath::parse(at)
            .map_err(|e| e.to_string())
            .and_then(|e| e.evaluate(fhirpath::resource(&resource), &context).map_err(|e| e.to_string()))
            .map_err(|e| format!("context {at}: {e}"))?,
        None => fhirpath::resource(&resource),
    };
    let result = fhirpath::parse(&case.expression)
        .map_err(|e| e.to_string())
        .and_then(|e| e.evaluate(focus, &context).map_err(|e| e.to_string()));
    let result = match (result, case.invalid) {
        (Err(_), true) => return Ok(()),
        (Ok(_), true) => return Err("expected an error".into()),
        (Err(error), false) => return Err(error),
        (Ok(result), false) => result,
    };
    let got: Vec<String> = match case.predicate {
        true => fhirpath::truth(&result)
            .map(|b| vec![(!result.is_empty() && b).to_string()])
            .unwrap_or_else(|| vec!["false".into()]),
        false => result.iter().map(shown).collect(),
    };
    let expected: Vec<String> = case.outputs.iter().map(|(_, v)| v.trim_start_matches('@').to_string()).collect();
    let same = got.len() == expected.len()
        && got.iter().zip(&expected).all(|(g, e)| g == e || g.trim_start_matches('T') == e.trim_start_matches('T'));
    match same {
        true => Ok(()),
        false => Err(format!("got {got:?}, expected {expected:?}")),
    }
}

#[test]
fn official_suite() {
    let cases = cases();
    assert!(cases.len() > 700, "{} cases read", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| passes(case)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(format!("{}: {} → {why}", case.name, case.expression)),
            Err(_) => failures.push(format!("{}: {} → panicked", case.name, case.expression)),
        }
    }
    let passed = cases.len() - failures.len();
    println!("FHIRPath R4 suite: {passed} of {} pass", cases.len());
    if std::env::var("FHIRPATH_FAILURES").is_ok() {
        failures.iter().for_each(|f| println!("  {f}"));
    }
    assert!(passed >= PASSING_AT_LEAST, "{passed} pass, fewer than {PASSING_AT_LEAST}");
}
