//! The billing rules, kept by the write transaction itself (as the scheduling rules are, ADR
//! 10), so that no write path can go around them:
//!
//! - a patient or proxy writes no billing record ([`BILLING_RECORDS`]: bills, payments, claims);
//! - a patient or proxy submits insurance cards as `draft` Coverages and changes only those;
//! - when a transaction writes a PaymentReconciliation, each Invoice its details pay is read
//!   with the transaction's locking read (concurrent payments of one Invoice queue up on its
//!   row, on any node), its active payments are added up inside the transaction, and the
//!   Invoice moves to `balanced` when they cover its total (back to `issued` when a payment is
//!   withdrawn). A payment in another currency than the Invoice's is refused.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use super::workflow::{live, live_version, refused, unprocessable, Workflow};
use super::FhirService;
use crate::auth::Access;
use crate::model::{ErrorKind, IssueCode};
use crate::portal::billing::{
    invoice_total, invoices_paid, paid_towards, patient_coverage_refusal, settled_status, sum_in, Amount, Currency,
    BILLING_RECORDS,
};
use crate::store::{IndexRows, ResourceVersion, SearchQuery, StoreError, StoreResult, StoreTx, WriteMethod};

/// The most payments one Invoice is settled from; more is refused rather than summed in part.
const MAX_PAYMENTS_PER_INVOICE: usize = 1000;

/// A write transaction that keeps the billing rules (see the module documentation).
pub(super) struct BillingTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The Coverages a patient or proxy wrote here, as they were before (`None`: new).
    cards: BTreeMap<String, Option<Value>>,
    /// The Invoices whose payments changed here.
    invoices: Vec<String>,
}

impl BillingTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access) -> Self {
        BillingTx { inner, service, access, cards: BTreeMap::new(), invoices: Vec::new() }
    }

    /// Notes the Invoices a payment paid before this write and pays after it.
    async fn note_payment(&mut self, version: &ResourceVersion) -> StoreResult<()> {
        let base_url = self.service.config.base_url.clone();
        let before = live(self.inner.as_mut(), "PaymentReconciliation", &version.id).await?;
        let after = (!version.deleted).then(|| serde_json::from_slice::<Value>(&version.body).ok()).flatten();
        for payment in before.iter().chain(after.iter()) {
            for id in invoices_paid(payment, &base_url) {
                if !self.invoices.iter().any(|known| known == id) {
                    self.invoices.push(id.to_string());
                }
            }
        }
        Ok(())
    }

    async fn check_cards(&mut self) -> StoreResult<()> {
        for (id, before) in self.cards.clone() {
            let after = live(self.inner.as_mut(), "Coverage", &id).await?;
            if let Some(refusal) = patient_coverage_refusal(before.as_ref(), after.as_ref()) {
                return Err(unprocessable(format!("Coverage/{id}: {refusal}")));
            }
        }
        Ok(())
    }

    /// Moves each Invoice whose payments changed to the status they give it.
    async fn settle_invoices(&mut self) -> StoreResult<()> {
        for id in self.invoices.clone() {
            let Some((version, mut invoice)) = live_version(self.inner.as_mut(), "Invoice", &id).await? else {
                continue;
            };
            let Some((total, currency)) = invoice_total(&invoice) else { continue };
            let paid = self.paid_towards(&id).await?;
            let paid = sum_in(&currency, &paid).map_err(|problem| unprocessable(format!("Invoice/{id}: {problem}")))?;
            let status = invoice.get("status").and_then(Value::as_str).unwrap_or("");
            let Some(settled) = settled_status(status, paid, total) else { continue };
            invoice["status"] = Value::String(settled.to_string());
            self.service
                .store_resource(self.inner.as_mut(), "Invoice", &id, version.version + 1, invoice, WriteMethod::Update)
                .await
                .map_err(|error| StoreError::Refused(Box::new(error)))?;
        }
        Ok(())
    }

    /// The parts of the active payments of Invoice `id`, as this transaction sees them.
    async fn paid_towards(&mut self, id: &str) -> StoreResult<Vec<(Amount, Currency)>> {
        let mut query = SearchQuery::new("PaymentReconciliation", MAX_PAYMENTS_PER_INVOICE);
        let criterion = self
            .service
            .criterion("PaymentReconciliation", "detail-request", &format!("Invoice/{id}"))
            .map_err(|error| StoreError::Refused(Box::new(error)))?;
        query.all_of.push(criterion);
        let page = self.inner.search(&query).await?;
        if page.next.is_some() {
            return Err(unprocessable(format!(
                "Invoice/{id} has more than {MAX_PAYMENTS_PER_INVOICE} payments: settle it by hand"
            )));
        }
        let base_url = &self.service.config.base_url;
        let mut parts = Vec::new();
        for version in &page.resources {
            let Ok(payment) = serde_json::from_slice::<Value>(&version.body) else { continue };
            parts.extend(paid_towards(&payment, id, base_url));
        }
        Ok(parts)
    }
}

#[async_trait]
impl Workflow for BillingTx {
    fn inner(&mut self) -> &mut dyn StoreTx {
        self.inner.as_mut()
    }

    fn into_inner(self) -> Box<dyn StoreTx> {
        self.inner
    }

    async fn note(&mut self, version: &ResourceVersion, _rows: &IndexRows) -> StoreResult<()> {
        let resource_type = version.resource_type.as_str();
        let by_patient = self.access.writes_for_patients(resource_type);
        if by_patient && BILLING_RECORDS.contains(&resource_type) {
            return Err(refused(
                ErrorKind::Forbidden,
                IssueCode::Forbidden,
                format!(
                    "{resource_type}/{}: billing records are written by the clinic; a patient reads them",
                    version.id
                ),
            ));
        }
        if by_patient && resource_type == "Coverage" && !self.cards.contains_key(&version.id) {
            let before = live(self.inner.as_mut(), "Coverage", &version.id).await?;
            self.cards.insert(version.id.clone(), before);
        }
        if resource_type == "PaymentReconciliation" {
            self.note_payment(version).await?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> StoreResult<()> {
        self.check_cards().await?;
        self.settle_invoices().await
    }
}
