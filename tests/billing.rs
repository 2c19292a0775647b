//! Bills, payments and insurance cards end to end through HTTP, on both databases: what a
//! patient reads and may not write, payments that settle an Invoice, and insurance cards a
//! patient submits as drafts for the clinic to activate.

mod common;

use common::smart::{smart_server, Smart};
use common::{body, outcome, Db};
use reqwest::Method;
use serde_json::{json, Value};

fn invoice(patient: &str, total: f64) -> Value {
    json!({"resourceType": "Invoice", "status": "issued",
        "subject": {"reference": format!("Patient/{patient}")},
        "date": "2026-11-02",
        "lineItem": [{"sequence": 1, "chargeItemCodeableConcept": {"text": "Office visit"},
            "priceComponent": [{"type": "base", "amount": {"value": total, "currency": "USD"}}]}],
        "totalNet": {"value": total, "currency": "USD"},
        "totalGross": {"value": total, "currency": "USD"}})
}

fn payment(invoice: &str, amount: f64, currency: &str) -> Value {
    json!({"resourceType": "PaymentReconciliation", "status": "active", "created": "2026-11-03T10:00:00Z",
        "paymentDate": "2026-11-03", "paymentAmount": {"value": amount, "currency": currency},
        "detail": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payment-type", "code": "payment"}]},
            "request": {"reference": format!("Invoice/{invoice}")},
            "amount": {"value": amount, "currency": currency}}]})
}

fn ids(bundle: &Value, resource_type: &str) -> Vec<String> {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let of_type = entries.iter().filter(|e| e["resource"]["resourceType"] == resource_type);
    let mut ids: Vec<String> = of_type.map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

async fn status_of(smart: &Smart, token: &str, path: &str) -> String {
    body(smart.get(path, token).await).await["status"].as_str().unwrap_or("").to_string()
}

async fn bills_and_payments(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let hers = smart.create(&admin, &invoice(&ana, 120.0)).await;
    let his = smart.create(&admin, &invoice(&luis, 80.0)).await;
    let account = smart
        .create(
            &admin,
            &json!({"resourceType": "Account", "status": "active",
        "subject": [{"reference": format!("Patient/{ana}")}]}),
        )
        .await;
    smart.add_secret_client("billing", "billing-secret").await;
    let billing = smart
        .system_token(
            "billing",
            "billing-secret",
            "system/PaymentReconciliation.cru system/PaymentNotice.c system/Invoice.r",
        )
        .await;
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], "launch/patient patient/*.cruds").await;

    // Her open bills, her account; his bill does not exist for her.
    let open = body(smart.get("Invoice?status=issued", &ana_token).await).await;
    assert_eq!(ids(&open, "Invoice"), vec![hers.clone()]);
    assert_eq!(open["entry"][0]["resource"]["totalGross"]["value"], 120.0);
    assert_eq!(smart.get(&format!("Invoice/{his}"), &ana_token).await.status(), 404);
    assert_eq!(ids(&body(smart.get("Account", &ana_token).await).await, "Account"), vec![account]);

    // She writes no bill and no payment, even with a write scope; nothing is stored.
    let forged = smart.send(Method::POST, "Invoice", &ana_token, &invoice(&ana, 1.0)).await;
    assert_eq!(forged.status(), 403);
    assert!(outcome(forged).await.contains("billing records are written by the clinic"));
    let mut paid_by_her = body(smart.get(&format!("Invoice/{hers}"), &ana_token).await).await;
    paid_by_her["status"] = json!("balanced");
    let path = format!("Invoice/{hers}");
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &paid_by_her).await.status(), 403);
    let response = smart.send(Method::POST, "PaymentReconciliation", &ana_token, &payment(&hers, 120.0, "USD")).await;
    assert_eq!(response.status(), 403);
    assert_eq!(smart.send(Method::DELETE, &path, &ana_token, &json!({})).await.status(), 403);
    assert_eq!(status_of(&smart, &admin, &path).await, "issued");
    assert_eq!(body(smart.get("PaymentReconciliation?_summary=count", &admin).await).await["total"], 0);

    // The billing system records payments; paid in full, the Invoice is balanced.
    let first = smart.create(&billing, &payment(&hers, 50.0, "USD")).await;
    assert_eq!(status_of(&smart, &ana_token, &path).await, "issued", "50 of 120 paid");
    let euros = smart.send(Method::POST, "PaymentReconciliation", &billing, &payment(&hers, 70.0, "EUR")).await;
    assert_eq!(euros.status(), 422);
    assert!(outcome(euros).await.contains("a payment in EUR cannot settle an Invoice in USD"));
    let second = smart.create(&billing, &payment(&hers, 70.0, "USD")).await;
    assert_eq!(status_of(&smart, &ana_token, &path).await, "balanced");
    let his_payment = smart.create(&billing, &payment(&his, 80.0, "USD")).await;
    assert_eq!(status_of(&smart, &admin, &format!("Invoice/{his}")).await, "balanced");
    let open = body(smart.get("Invoice?status=issued", &ana_token).await).await;
    assert!(ids(&open, "Invoice").is_empty(), "no open bills left");

    // Her payment history: hers, by search and by id, with her invoices included; not his.
    let history =
        body(smart.get("PaymentReconciliation?_include=PaymentReconciliation:detail-request", &ana_token).await).await;
    assert_eq!(ids(&history, "PaymentReconciliation"), sorted(vec![first.clone(), second.clone()]));
    assert_eq!(ids(&history, "Invoice"), vec![hers.clone()]);
    assert_eq!(smart.get(&format!("PaymentReconciliation/{first}"), &ana_token).await.status(), 200);
    assert_eq!(smart.get(&format!("PaymentReconciliation/{his_payment}"), &ana_token).await.status(), 404);
    let by_his_bill = format!("PaymentReconciliation?detail-request=Invoice/{his}");
    assert!(ids(&body(smart.get(&by_his_bill, &ana_token).await).await, "PaymentReconciliation").is_empty());
    let revincluded = format!("Invoice?_id={hers},{his}&_revinclude=PaymentReconciliation:detail-request");
    let revincluded = body(smart.get(&revincluded, &ana_token).await).await;
    assert_eq!(ids(&revincluded, "PaymentReconciliation"), sorted(vec![first.clone(), second.clone()]));
    let notice = json!({"resourceType": "PaymentNotice", "status": "active", "created": "2026-11-03T10:00:00Z",
        "request": {"reference": format!("Invoice/{hers}")},
        "payment": {"reference": format!("PaymentReconciliation/{second}")},
        "recipient": {"display": "Clinic"}, "amount": {"value": 70.0, "currency": "USD"}});
    let hers_notice = smart.create(&billing, &notice).await;
    let mut his_notice = notice.clone();
    his_notice["request"]["reference"] = json!(format!("Invoice/{his}"));
    smart.create(&billing, &his_notice).await;
    assert_eq!(ids(&body(smart.get("PaymentNotice", &ana_token).await).await, "PaymentNotice"), vec![hers_notice]);

    // A payment withdrawn: the Invoice is open again.
    let mut withdrawn = body(smart.get(&format!("PaymentReconciliation/{second}"), &billing).await).await;
    withdrawn["status"] = json!("cancelled");
    let response = smart.send(Method::PUT, &format!("PaymentReconciliation/{second}"), &billing, &withdrawn).await;
    assert_eq!(response.status(), 200);
    assert_eq!(status_of(&smart, &ana_token, &path).await, "issued");
}

async fn insurance_cards(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let insurer = smart.create(&admin, &json!({"resourceType": "Organization", "name": "Acme Health"})).await;
    let card = |patient: &str, status: &str| {
        json!({"resourceType": "Coverage", "status": status, "subscriberId": "XZ-1234",
            "beneficiary": {"reference": format!("Patient/{patient}")},
            "payor": [{"reference": format!("Organization/{insurer}")}]})
    };
    let scope = "launch/patient patient/Coverage.cruds";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let mother = smart
        .create(
            &admin,
            &json!({"resourceType": "RelatedPerson",
        "patient": {"reference": format!("Patient/{ana}")}}),
        )
        .await;
    let proxy = smart.user_token("mother", &format!("RelatedPerson/{mother}"), &[&ana], "user/Coverage.cru").await;
    let count = |token: String| {
        let smart = &smart;
        async move { body(smart.get("Coverage?_summary=count", &token).await).await["total"].clone() }
    };

    let response = smart.send(Method::POST, "Coverage", &ana_token, &card(&ana, "active")).await;
    assert_eq!(response.status(), 422);
    assert!(outcome(response).await.contains("as status draft"));
    assert_eq!(smart.send(Method::POST, "Coverage", &ana_token, &card(&luis, "draft")).await.status(), 403);
    assert_eq!(count(admin.clone()).await, 0, "nothing of the refused cards was stored");

    let draft = smart.create(&ana_token, &card(&ana, "draft")).await;
    let path = format!("Coverage/{draft}");
    let mut changed = body(smart.get(&path, &ana_token).await).await;
    changed["subscriberId"] = json!("XZ-9999");
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &changed).await.status(), 200, "her draft, changed");
    changed["status"] = json!("active");
    let response = smart.send(Method::PUT, &path, &ana_token, &changed).await;
    assert_eq!(response.status(), 422, "she does not activate her card");
    assert_eq!(status_of(&smart, &admin, &path).await, "draft");

    // The clinic activates it; from then on it is the clinic's.
    assert_eq!(smart.send(Method::PUT, &path, &admin, &changed).await.status(), 200);
    changed["subscriberId"] = json!("XZ-0000");
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &changed).await.status(), 422);
    assert_eq!(smart.send(Method::DELETE, &path, &ana_token, &json!({})).await.status(), 422);
    let stored = body(smart.get(&path, &admin).await).await;
    assert_eq!((stored["status"].as_str(), stored["subscriberId"].as_str()), (Some("active"), Some("XZ-9999")));

    // Her mother submits a card for her, as a draft too.
    let response = smart.send(Method::POST, "Coverage", &proxy, &card(&ana, "active")).await;
    assert_eq!(response.status(), 422);
    assert_eq!(smart.send(Method::POST, "Coverage", &proxy, &card(&ana, "draft")).await.status(), 201);
    assert_eq!(count(ana_token.clone()).await, 2);
}

async fn staff_keep_the_books(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let clerk = smart.create(&admin, &json!({"resourceType": "Practitioner"})).await;
    let scope = "user/Invoice.cruds user/PaymentReconciliation.cruds user/Coverage.cruds";
    let token = smart.user_token("clerk", &format!("Practitioner/{clerk}"), &[], scope).await;

    // The statement says how payments are found and what patients may do.
    let statement = body(smart.get("metadata", &token).await).await;
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let payments = resources.iter().find(|r| r["type"] == "PaymentReconciliation").unwrap();
    assert!(payments["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "detail-request"));
    assert!(payments["documentation"].as_str().unwrap().contains("through the Invoice"));

    let bill = smart.create(&token, &invoice(&ana, 30.0)).await;
    smart.create(&token, &payment(&bill, 30.0, "USD")).await;
    assert_eq!(status_of(&smart, &token, &format!("Invoice/{bill}")).await, "balanced");
    let card = json!({"resourceType": "Coverage", "status": "active",
        "beneficiary": {"reference": format!("Patient/{ana}")}, "payor": [{"reference": format!("Patient/{ana}")}]});
    assert_eq!(smart.send(Method::POST, "Coverage", &token, &card).await.status(), 201, "staff file active cards");

    // An Invoice and its payment in one transaction: the payment settles it at commit.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": invoice(&ana, 10.0), "fullUrl": "urn:uuid:7f1c1f4e-0001-4b8e-9d6c-0a0000000001",
            "request": {"method": "POST", "url": "Invoice"}},
        {"resource": payment("x", 10.0, "USD"), "request": {"method": "POST", "url": "PaymentReconciliation"}}]});
    let mut bundle = bundle;
    bundle["entry"][1]["resource"]["detail"][0]["request"]["reference"] =
        json!("urn:uuid:7f1c1f4e-0001-4b8e-9d6c-0a0000000001");
    let response = smart.send(Method::POST, "", &token, &bundle).await;
    assert_eq!(response.status(), 200);
    let answer = body(response).await;
    let location = answer["entry"][0]["response"]["location"].as_str().unwrap();
    let id = location.split("Invoice/").nth(1).unwrap().split('/').next().unwrap();
    assert_eq!(status_of(&smart, &token, &format!("Invoice/{id}")).await, "balanced");
}

on_both_databases!(bills_and_payments, insurance_cards, staff_keep_the_books);
