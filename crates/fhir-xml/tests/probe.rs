use fhir_xml::{json_to_xml, xml_to_json};

fn bundles(levels: usize) -> String {
    let mut s = String::from(r#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/>"#);
    for _ in 0..levels {
        s.push_str(r#"<entry><resource><Bundle><type value="collection"/>"#);
    }
    for _ in 0..levels {
        s.push_str("</Bundle></resource></entry>");
    }
    s.push_str("</Bundle>");
    s
}
fn items(levels: usize) -> String {
    let mut s = String::from(r#"<QuestionnaireResponse xmlns="http://hl7.org/fhir"><status value="completed"/>"#);
    for _ in 0..levels {
        s.push_str(r#"<item><linkId value="a"/><answer><valueCoding><code value="c"/></valueCoding>"#);
    }
    for _ in 0..levels {
        s.push_str("</answer></item>");
    }
    s.push_str("</QuestionnaireResponse>");
    s
}
fn exts(levels: usize) -> String {
    let mut s = String::from(r#"<Patient xmlns="http://hl7.org/fhir">"#);
    for _ in 0..levels {
        s.push_str(r#"<extension url="u">"#);
    }
    s.push_str(r#"<valueString value="x"/>"#);
    for _ in 0..levels {
        s.push_str("</extension>");
    }
    s.push_str("</Patient>");
    s
}

fn fits(xml: &str, stack: usize) -> bool {
    let xml = xml.to_owned();
    // Run as a child process would be cleaner; instead, run on a thread and rely on
    // the depth being under the inline threshold (else the crate uses its own thread).
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let json = xml_to_json(xml.as_bytes()).unwrap();
            json_to_xml(&json, true).unwrap();
            json_to_xml(&json, false).unwrap();
        })
        .unwrap()
        .join()
        .is_ok()
}

#[test]
fn stack_at_inline_threshold() {
    // depth of each doc at the inline threshold (16): bundles(5)=16, items(5)=1+3*5=16...
    for (name, doc) in [("bundles(4)", bundles(4)), ("items(6)", items(6)), ("exts(14)", exts(14))] {
        for kib in [128usize, 256, 384, 512, 768, 1024] {
            if std::env::var("PROBE_STACK").map(|v| v == format!("{name}:{kib}")).unwrap_or(false) {
                let ok = fits(&doc, kib << 10);
                eprintln!("{name} at {kib} KiB: {ok}");
            }
        }
    }
}
