//! Bills, payments and insurance cards in the portal: which records a patient may only read,
//! what a patient may submit as an insurance card, and when a payment settles an Invoice.

use serde_json::Value;

use crate::search::index::parse_local_reference;

/// Types a patient reads but never writes: the clinic's billing system records bills, payments,
/// claims and their outcomes.
pub const BILLING_RECORDS: &[&str] = &[
    "Account",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
    "Invoice",
    "PaymentNotice",
    "PaymentReconciliation",
];

/// An amount of money in ten-thousandths of its unit, so that sums of payments are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount(i64);

impl Amount {
    fn of(money: &Value) -> Option<(Amount, Currency)> {
        let value = money.get("value")?.as_f64()?;
        let currency = money.get("currency").and_then(Value::as_str).map(str::to_string);
        Some((Amount((value * 10_000.0).round() as i64), currency))
    }
}

/// A Money's currency code, when it has one.
pub type Currency = Option<String>;

/// What an Invoice asks to be paid: its `totalGross` (with taxes), else its `totalNet`.
pub fn invoice_total(invoice: &Value) -> Option<(Amount, Currency)> {
    invoice.get("totalGross").or_else(|| invoice.get("totalNet")).and_then(Amount::of)
}

/// The Invoices (ids) a PaymentReconciliation's details name as what they pay.
pub fn invoices_paid<'a>(payment: &'a Value, base_url: &str) -> Vec<&'a str> {
    details(payment).filter_map(|detail| invoice_of(detail, base_url)).fold(Vec::new(), |mut ids, id| {
        if !ids.contains(&id) {
            ids.push(id);
        }
        ids
    })
}

/// What an active PaymentReconciliation pays towards Invoice `invoice_id`, with the currency of
/// each part: cancelled, draft and entered-in-error payments pay nothing.
pub fn paid_towards(payment: &Value, invoice_id: &str, base_url: &str) -> Vec<(Amount, Currency)> {
    if payment.get("status").and_then(Value::as_str) != Some("active") {
        return Vec::new();
    }
    details(payment)
        .filter(|detail| invoice_of(detail, base_url) == Some(invoice_id))
        .filter_map(|detail| detail.get("amount").and_then(Amount::of))
        .collect()
}

/// The status an Invoice takes after a change of its payments, when it changes: an issued
/// Invoice paid in full is `balanced`, a balanced one whose payment was withdrawn is `issued`
/// again. Other statuses are the billing system's to set.
pub fn settled_status(status: &str, paid: Amount, total: Amount) -> Option<&'static str> {
    match status {
        "issued" if paid >= total => Some("balanced"),
        "balanced" if paid < total => Some("issued"),
        _ => None,
    }
}

/// Adds up parts of payments in the Invoice's currency; `Err` names a part in another one.
pub fn sum_in(currency: &Currency, parts: &[(Amount, Currency)]) -> Result<Amount, String> {
    let mut sum = 0i64;
    for (amount, part_currency) in parts {
        if let (Some(part_currency), Some(currency)) = (part_currency, currency) {
            if part_currency != currency {
                return Err(format!("a payment in {part_currency} cannot settle an Invoice in {currency}"));
            }
        }
        sum = sum.saturating_add(amount.0);
    }
    Ok(Amount(sum))
}

/// Why a patient's change to an insurance card is refused, if it is: a patient submits a new
/// or changed card as a `draft` Coverage for the clinic to activate, may change or withdraw
/// their drafts, and never touches a card once staff took it up.
pub fn patient_coverage_refusal(before: Option<&Value>, after: Option<&Value>) -> Option<&'static str> {
    let status = |coverage: &Value| coverage.get("status").and_then(Value::as_str).unwrap_or("").to_string();
    if before.is_some_and(|before| status(before) != "draft") {
        return Some("an insurance card the clinic has taken up (not draft) is changed by the clinic only");
    }
    if after.is_some_and(|after| status(after) != "draft") {
        return Some("a patient submits an insurance card as status draft; the clinic activates it");
    }
    None
}

fn details(payment: &Value) -> impl Iterator<Item = &Value> {
    payment.get("detail").and_then(Value::as_array).into_iter().flatten()
}

fn invoice_of<'a>(detail: &'a Value, base_url: &str) -> Option<&'a str> {
    let reference = detail.pointer("/request/reference")?.as_str()?;
    match parse_local_reference(reference, base_url)? {
        ("Invoice", id) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payments_add_up_exactly_in_the_invoice_currency() {
        let payment = json!({"status": "active", "detail": [
            {"request": {"reference": "Invoice/a"}, "amount": {"value": 0.1, "currency": "USD"}},
            {"request": {"reference": "Invoice/a"}, "amount": {"value": 0.2, "currency": "USD"}},
            {"request": {"reference": "Invoice/b"}, "amount": {"value": 5, "currency": "USD"}},
        ]});
        let parts = paid_towards(&payment, "a", "http://x/fhir");
        let (total, currency) = invoice_total(&json!({"totalGross": {"value": 0.3, "currency": "USD"}})).unwrap();
        assert_eq!(sum_in(&currency, &parts), Ok(total));
        assert_eq!(invoices_paid(&payment, "http://x/fhir"), vec!["a", "b"]);
        assert!(sum_in(&Some("EUR".to_string()), &parts).is_err());
        assert!(paid_towards(&json!({"status": "cancelled", "detail": payment["detail"]}), "a", "").is_empty());
    }

    #[test]
    fn only_issued_and_balanced_invoices_follow_their_payments() {
        let (paid, total) = (Amount(10), Amount(10));
        assert_eq!(settled_status("issued", paid, total), Some("balanced"));
        assert_eq!(settled_status("balanced", Amount(9), total), Some("issued"));
        assert_eq!(settled_status("balanced", paid, total), None);
        assert_eq!(settled_status("draft", paid, total), None);
    }

    #[test]
    fn patients_submit_and_change_draft_cards_only() {
        let draft = json!({"status": "draft"});
        let active = json!({"status": "active"});
        assert_eq!(patient_coverage_refusal(None, Some(&draft)), None);
        assert_eq!(patient_coverage_refusal(Some(&draft), None), None);
        assert!(patient_coverage_refusal(None, Some(&active)).is_some());
        assert!(patient_coverage_refusal(Some(&draft), Some(&active)).is_some());
        assert!(patient_coverage_refusal(Some(&active), Some(&active)).is_some());
    }
}
