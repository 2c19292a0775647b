//! The refill rules, kept by the write transaction itself (as the scheduling rules are, ADR 10):
//! every write path runs in a [`RefillTx`], so no REST write, bundle or operation can request
//! a refill of a foreign, stopped or already requested prescription.
//!
//! At commit, for each Task written that is an open refill request: its MedicationRequest is
//! read with the transaction's locking read (so concurrent requests for one prescription queue
//! up on its row, on any node), must be active and of the Task's patient, and no other open
//! request may have it as focus (searched inside the transaction, after the lock). A patient or
//! proxy may only make refill requests (`requested`, requester their patient) and withdraw them
//! (`cancelled`); what happens to a request next is the clinic's.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use super::workflow::{live, unprocessable, Workflow};
use super::FhirService;
use crate::auth::Access;
use crate::portal::refills::{is_open_request, is_refill_request, local_reference, status_of, OPEN_STATUSES};
use crate::store::{IndexRows, ResourceVersion, SearchQuery, StoreError, StoreResult, StoreTx};

/// A write transaction that keeps the refill rules (see the module documentation).
pub(super) struct RefillTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The Tasks written here, as they were before (`None`: new).
    tasks: BTreeMap<String, Option<Value>>,
}

impl RefillTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access) -> Self {
        RefillTx { inner, service, access, tasks: BTreeMap::new() }
    }

    /// Checks each Task written here (see the module documentation).
    async fn check_tasks(&mut self) -> StoreResult<()> {
        for (id, before) in self.tasks.clone() {
            let after = live(self.inner.as_mut(), "Task", &id).await?;
            if self.access.writes_for_patients("Task") {
                check_patient_change(&id, before.as_ref(), after.as_ref())?;
            }
            let Some(task) = after.filter(is_open_request) else { continue };
            let reopened = before.as_ref().is_none_or(|b| !is_open_request(b) || b["focus"] != task["focus"]);
            if reopened {
                self.check_request(&id, &task).await?;
            }
        }
        Ok(())
    }

    /// The prescription of an open request exists, is active, is the Task's patient's, and has
    /// no other open request.
    async fn check_request(&mut self, id: &str, task: &Value) -> StoreResult<()> {
        let base_url = self.service.config.base_url.clone();
        let Some(("MedicationRequest", prescription_id)) = local_reference(task, "/focus/reference", &base_url) else {
            return Err(unprocessable(format!(
                "Task/{id}: a refill request's focus is a MedicationRequest of this server"
            )));
        };
        let prescription_id = prescription_id.to_string();
        let Some(prescription) = live(self.inner.as_mut(), "MedicationRequest", &prescription_id).await? else {
            return Err(unprocessable(format!("Task/{id}: MedicationRequest/{prescription_id} does not exist")));
        };
        let status = prescription.get("status").and_then(Value::as_str).unwrap_or("");
        if status != "active" {
            return Err(unprocessable(format!(
                "MedicationRequest/{prescription_id} is {status}: only an active prescription can be refilled"
            )));
        }
        let whose = local_reference(&prescription, "/subject/reference", &base_url);
        if whose.is_none() || whose != local_reference(task, "/for/reference", &base_url) {
            return Err(unprocessable(format!("Task/{id}: MedicationRequest/{prescription_id} is not the patient's")));
        }
        let mut query = SearchQuery::new("Task", 10);
        let criterion = |name: &str, value: &str| {
            self.service.criterion("Task", name, value).map_err(|error| StoreError::Refused(Box::new(error)))
        };
        query.all_of.push(criterion("focus", &format!("MedicationRequest/{prescription_id}"))?);
        query.all_of.push(criterion("status", &OPEN_STATUSES.join(","))?);
        let page = self.inner.search(&query).await?;
        let other = page.resources.iter().find(|v| {
            v.id != id && serde_json::from_slice::<Value>(&v.body).is_ok_and(|other| is_refill_request(&other))
        });
        if let Some(other) = other {
            return Err(unprocessable(format!(
                "MedicationRequest/{prescription_id} has an open refill request already (Task/{})",
                other.id
            )));
        }
        Ok(())
    }
}

/// What a patient or proxy may do to a Task: make a refill request (`requested`, for and by
/// their patient; the token's reach has checked whose), or withdraw one (`cancelled`).
fn check_patient_change(id: &str, before: Option<&Value>, after: Option<&Value>) -> StoreResult<()> {
    match (before, after) {
        (None, Some(task)) => {
            if !is_refill_request(task) {
                return Err(unprocessable(format!("Task/{id}: a patient's Task is a refill or renewal request")));
            }
            if status_of(task) != "requested" {
                return Err(unprocessable(format!("Task/{id}: a refill request starts as requested")));
            }
            if task["requester"] != task["for"] {
                return Err(unprocessable(format!("Task/{id}: a refill request is requested by its patient")));
            }
            Ok(())
        }
        (Some(before), Some(after)) => {
            let mut withdrawn = before.clone();
            withdrawn["status"] = Value::String("cancelled".to_string());
            let unchanged = |task: &Value| {
                let mut task = task.clone();
                if let Some(object) = task.as_object_mut() {
                    object.remove("meta");
                }
                task
            };
            if is_open_request(before) && unchanged(after) == unchanged(&withdrawn) {
                return Ok(());
            }
            Err(unprocessable(format!(
                "Task/{id}: a patient may withdraw an open refill request (status cancelled) and change nothing else"
            )))
        }
        (Some(_), None) => Err(unprocessable(format!("Task/{id}: withdraw a refill request instead of deleting it"))),
        (None, None) => Ok(()),
    }
}

#[async_trait]
impl Workflow for RefillTx {
    fn inner(&mut self) -> &mut dyn StoreTx {
        self.inner.as_mut()
    }

    fn into_inner(self) -> Box<dyn StoreTx> {
        self.inner
    }

    async fn note(&mut self, version: &ResourceVersion, _rows: &IndexRows) -> StoreResult<()> {
        if version.resource_type == "Task" && !self.tasks.contains_key(&version.id) {
            let before = live(self.inner.as_mut(), "Task", &version.id).await?;
            self.tasks.insert(version.id.clone(), before);
        }
        Ok(())
    }

    async fn settle(&mut self) -> StoreResult<()> {
        self.check_tasks().await
    }
}
