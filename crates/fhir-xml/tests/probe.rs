use fhir_xml::xml_to_json;
#[test]
fn probe() {
    let cases: &[&[u8]] = &[
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="x/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/></Patient><Patient/>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/></Patient>trailing"#,
        br#"<Patient xmlns="http://hl7.org/fhir">text<id value="x"/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="&bogus;"/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd"><id value="x"/></Patient>"#,
        br#"<f:Patient xmlns:f="http://hl7.org/fhir"><f:id value="x"/></f:Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="x"/><id value="y"/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><name><given value="a"/><family value="b"/><given value="c"/></name></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><gender value="female"/><id value="x"/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><birthDate value="not-a-date"/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><gender value="banana"/></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><active/></Patient>"#,
        br#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="1.50e2"/></valueQuantity></Observation>"#,
        br#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="abc"/></valueQuantity></Observation>"#,
        br#"<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="1"/></valueQuantity></Observation>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>a &amp; b &lt; c <script>x</script></p></div></text></Patient>"#,
        br#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div><p>no ns</p></div></text></Patient>"#,
        br#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><resource><Patient><id value="a"/></Patient></resource></entry></Bundle>"#,
        br#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><resource><Patient><id value="a"/></Patient><Patient><id value="b"/></Patient></resource></entry></Bundle>"#,
        br#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><resource><Banana/></resource></entry></Bundle>"#,
    ];
    for case in cases {
        let r = xml_to_json(case);
        println!(
            "{}\n   => {}\n",
            String::from_utf8_lossy(case),
            match r {
                Ok(j) => format!("OK {}", String::from_utf8_lossy(&j)),
                Err(e) => format!("ERR {e}"),
            }
        );
    }
}
#[test]
fn deep() {
    for depth in [5usize, 10, 20, 30, 40, 60, 80, 100, 1000] {
        let mut s = String::from(r#"<Patient xmlns="http://hl7.org/fhir">"#);
        for _ in 0..depth {
            s.push_str(r#"<extension url="u">"#);
        }
        for _ in 0..depth {
            s.push_str("</extension>");
        }
        s.push_str("</Patient>");
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || xml_to_json(s.as_bytes()).map(|v| v.len()))
            .unwrap()
            .join();
        eprintln!("depth {depth}: {:?}", r.map(|r| r.map_err(|e| e.0.chars().take(100).collect::<String>())));
    }
}

#[test]
fn deepjson() {
    for depth in [5usize, 10, 20, 30, 40, 60, 63, 100, 1000] {
        let mut s = String::from(r#"{"resourceType":"Patient","extension":["#);
        for _ in 0..depth {
            s.push_str(r#"{"url":"u","extension":["#);
        }
        s.push_str(r#"{"url":"u","valueString":"x"}"#);
        for _ in 0..depth {
            s.push_str("]}");
        }
        s.push_str("]}");
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || fhir_xml::json_to_xml(s.as_bytes(), false).map(|v| v.len()))
            .unwrap()
            .join();
        eprintln!("json depth {depth}: {:?}", r.map(|r| r.map_err(|e| e.0.chars().take(100).collect::<String>())));
    }
}
