//! The scheduling invariant, kept by the write transaction itself: every write path (REST,
//! batch, transaction, operations, jobs) runs in a [`SchedulingTx`], so none can book a Slot
//! twice or leave a Slot's status disagreeing with the Appointments on it.
//!
//! Appointments and Slots written in the transaction are noted as they pass; when it commits,
//! each Slot concerned is locked (`FOR UPDATE` on PostgreSQL; SQLite has one writer at a time),
//! the Appointments holding it are searched inside the transaction, and the rules of
//! [`crate::portal::scheduling`] are applied: a second holder is a 409, a Slot's status is
//! brought in line with its holder (or refused when the caller set it otherwise). Because the
//! search runs after the lock, a concurrent booking of the same Slot on another node is seen:
//! PostgreSQL's read-committed statements read what committed before the lock was granted.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use super::FhirService;
use crate::auth::scope::Permission;
use crate::auth::Access;
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::portal::scheduling::{
    expected_slot_status, held_slot_ids, is_bookable, span_of, status_of, times_disagree, HOLDING_STATUSES,
};
use crate::store::{
    IndexRows, JobStep, ResourceVersion, SearchPage, SearchQuery, StoreError, StoreResult, StoreTx, WriteMethod,
};

/// A write transaction that keeps the scheduling invariant (see the module documentation).
pub(super) struct SchedulingTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The Appointments written here, with the Slots each held before this transaction.
    appointments: BTreeMap<String, Vec<String>>,
    /// The Slots the caller wrote here.
    slots: BTreeSet<String>,
}

impl SchedulingTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access) -> Self {
        SchedulingTx { inner, service, access, appointments: BTreeMap::new(), slots: BTreeSet::new() }
    }

    /// The current, not deleted version of a resource, parsed.
    async fn live(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<(ResourceVersion, Value)>> {
        let Some(version) = self.inner.current(resource_type, id).await?.filter(|v| !v.deleted) else {
            return Ok(None);
        };
        let parsed = serde_json::from_slice(&version.body).unwrap_or(Value::Null);
        Ok(Some((version, parsed)))
    }

    /// Notes an Appointment about to be written: the Slots its stored version holds, and the
    /// cancellation cut-off for patients.
    async fn note_appointment(&mut self, version: &ResourceVersion) -> StoreResult<()> {
        if self.appointments.contains_key(&version.id) {
            return Ok(());
        }
        let before = self.live("Appointment", &version.id).await?;
        let base_url = &self.service.config.base_url;
        let held = before.as_ref().map(|(_, a)| held_slot_ids(a, base_url)).unwrap_or_default();
        if let Some((_, before)) = &before {
            self.check_cancel_cutoff(before, version)?;
        }
        self.appointments.insert(version.id.clone(), held);
        Ok(())
    }

    /// A patient (or proxy) may not cancel an Appointment that starts within the clinic's
    /// cut-off (`--cancel-cutoff`); staff and systems may.
    fn check_cancel_cutoff(&self, before: &Value, version: &ResourceVersion) -> StoreResult<()> {
        let Some(cutoff) = self.service.config.scheduling.cancel_cutoff else { return Ok(()) };
        if !self.access.is_patient_bound(Permission::Update, "Appointment")
            || !HOLDING_STATUSES.contains(&status_of(before))
        {
            return Ok(());
        }
        let after: Value = serde_json::from_slice(&version.body).unwrap_or(Value::Null);
        let frees = version.deleted || !HOLDING_STATUSES.contains(&status_of(&after));
        let starts = span_of(before).map(|span| span.start);
        match starts {
            Some(start) if frees && start - OffsetDateTime::now_utc() < cutoff => Err(refused(
                ErrorKind::Unprocessable,
                IssueCode::BusinessRule,
                format!(
                    "Appointment/{} starts within {} hours: it can no longer be cancelled online; please call the clinic",
                    version.id,
                    cutoff.whole_minutes() as f64 / 60.0
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Applies the scheduling rules to every Slot the transaction concerns (see the module
    /// documentation), in the order of their ids so that concurrent transactions lock them in
    /// one order.
    async fn settle(&mut self) -> StoreResult<()> {
        let base_url = self.service.config.base_url.clone();
        let mut by_appointments: BTreeSet<String> = BTreeSet::new();
        let mut holding = Vec::new();
        for (id, held_before) in self.appointments.clone() {
            by_appointments.extend(held_before);
            if let Some((_, appointment)) = self.live("Appointment", &id).await? {
                let held = held_slot_ids(&appointment, &base_url);
                by_appointments.extend(held.iter().cloned());
                if !held.is_empty() {
                    holding.push((id, appointment, held));
                }
            }
        }
        let concerned: BTreeSet<String> = by_appointments.iter().chain(&self.slots).cloned().collect();
        let mut slots = BTreeMap::new();
        for id in concerned {
            let slot = self.live("Slot", &id).await?;
            slots.insert(id, slot);
        }
        for (id, appointment, held) in &holding {
            let mut named = Vec::new();
            for slot_id in held {
                match slots.get(slot_id).and_then(Option::as_ref) {
                    Some((_, slot)) => named.push((slot_id.clone(), slot.clone())),
                    None => {
                        return Err(refused(
                            ErrorKind::Unprocessable,
                            IssueCode::NotFound,
                            format!("Appointment/{id} names Slot/{slot_id}, which does not exist"),
                        ))
                    }
                }
            }
            if let Some(why) = times_disagree(appointment, &named) {
                return Err(refused(
                    ErrorKind::Unprocessable,
                    IssueCode::BusinessRule,
                    format!("Appointment/{id}: {why}"),
                ));
            }
        }
        for (slot_id, slot) in slots {
            // A Slot the caller wrote beside no Appointment of it keeps the status the caller
            // gave, or is refused; one booked or cancelled here follows its Appointment.
            let set_by_caller = self.slots.contains(&slot_id) && !by_appointments.contains(&slot_id);
            self.settle_slot(&slot_id, slot, set_by_caller).await?;
        }
        Ok(())
    }

    /// Checks one locked Slot against the Appointments holding it, and writes the status they
    /// give it when the caller did not write it.
    async fn settle_slot(
        &mut self,
        slot_id: &str,
        slot: Option<(ResourceVersion, Value)>,
        set_by_caller: bool,
    ) -> StoreResult<()> {
        let holders = self.holders(slot_id).await?;
        if holders.len() > 1 {
            return Err(refused(
                ErrorKind::Conflict,
                IssueCode::Conflict,
                format!("Slot/{slot_id} is already taken by another appointment: it is no longer free"),
            ));
        }
        let holder = holders.first();
        let Some((version, mut resource)) = slot else {
            return match holder {
                Some((appointment, _)) => Err(refused(
                    ErrorKind::Conflict,
                    IssueCode::Conflict,
                    format!("Slot/{slot_id} is held by Appointment/{appointment}: cancel the appointment first"),
                )),
                None => Ok(()),
            };
        };
        let current = status_of(&resource).to_string();
        if let Some((appointment, _)) = holder.filter(|_| !is_bookable(&current)) {
            let message = match set_by_caller {
                true => format!(
                    "Slot/{slot_id} is held by Appointment/{appointment}: cancel that appointment before marking the slot {current}"
                ),
                false => format!("Slot/{slot_id} is {current}: it cannot be booked"),
            };
            return Err(refused(ErrorKind::Conflict, IssueCode::Conflict, message));
        }
        let expected = expected_slot_status(&current, holder.map(|(_, status)| status.as_str()));
        if expected == current {
            return Ok(());
        }
        if set_by_caller {
            return Err(match holder {
                Some((appointment, _)) => refused(
                    ErrorKind::Conflict,
                    IssueCode::Conflict,
                    format!(
                        "Slot/{slot_id} is held by Appointment/{appointment}, so its status is {expected}: \
                         it follows the appointment (cancel the appointment to free the slot)"
                    ),
                ),
                None => refused(
                    ErrorKind::Unprocessable,
                    IssueCode::BusinessRule,
                    format!(
                        "Slot/{slot_id} cannot be {current} while no Appointment holds it: \
                         book an Appointment on it, or mark it busy-unavailable to block it"
                    ),
                ),
            });
        }
        resource["status"] = Value::String(expected);
        let next = version.version + 1;
        self.service
            .store_resource(self.inner.as_mut(), "Slot", slot_id, next, resource, WriteMethod::Update)
            .await
            .map_err(|error| StoreError::Refused(Box::new(error)))?;
        Ok(())
    }

    /// The Appointments (id, status) holding a Slot, as this transaction sees them (at most two:
    /// one more than allowed).
    async fn holders(&mut self, slot_id: &str) -> StoreResult<Vec<(String, String)>> {
        let criterion = |name: &str, value: &str| {
            self.service.criterion("Appointment", name, value).map_err(|error| StoreError::Refused(Box::new(error)))
        };
        let mut query = SearchQuery::new("Appointment", 2);
        query.all_of.push(criterion("slot", &format!("Slot/{slot_id}"))?);
        query.all_of.push(criterion("status", &HOLDING_STATUSES.join(","))?);
        let page = self.inner.search(&query).await?;
        Ok(page
            .resources
            .iter()
            .map(|version| {
                let appointment: Value = serde_json::from_slice(&version.body).unwrap_or(Value::Null);
                (version.id.clone(), status_of(&appointment).to_string())
            })
            .collect())
    }
}

/// Whether a new Slot's status is one no Appointment gives it.
fn is_unheld_create(version: &ResourceVersion) -> bool {
    let slot: Value = serde_json::from_slice(&version.body).unwrap_or(Value::Null);
    !matches!(status_of(&slot), "busy" | "busy-tentative")
}

fn refused(kind: ErrorKind, code: IssueCode, message: String) -> StoreError {
    StoreError::Refused(Box::new(FhirError::with_issues(kind, vec![Issue::error(code, message)])))
}

#[async_trait]
impl StoreTx for SchedulingTx {
    async fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<ResourceVersion>> {
        self.inner.current(resource_type, id).await
    }

    async fn vread(&mut self, resource_type: &str, id: &str, version: i64) -> StoreResult<Option<ResourceVersion>> {
        self.inner.vread(resource_type, id, version).await
    }

    async fn search(&mut self, query: &SearchQuery) -> StoreResult<SearchPage> {
        self.inner.search(query).await
    }

    async fn write(&mut self, version: ResourceVersion, index: IndexRows) -> StoreResult<()> {
        match version.resource_type.as_str() {
            "Appointment" => self.note_appointment(&version).await?,
            // A Slot created free (or blocked) cannot be held by an Appointment of an earlier
            // transaction, which would have been refused for naming a missing Slot: nothing to
            // settle unless an Appointment of this one names it ($generate-slots writes
            // thousands).
            "Slot" if !(version.version == 1 && is_unheld_create(&version)) => {
                self.slots.insert(version.id.clone());
            }
            _ => {}
        }
        self.inner.write(version, index).await
    }

    async fn reindex(&mut self, batch: &[(ResourceVersion, IndexRows)]) -> StoreResult<usize> {
        self.inner.reindex(batch).await
    }

    async fn job_step(&mut self, step: &JobStep<'_>) -> StoreResult<bool> {
        self.inner.job_step(step).await
    }

    async fn enqueue_job(&mut self, kind: &str, parameters: &str, not_before: OffsetDateTime) -> StoreResult<i64> {
        self.inner.enqueue_job(kind, parameters, not_before).await
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if let Err(error) = self.settle().await {
            self.inner.rollback().await;
            return Err(error);
        }
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) {
        self.inner.rollback().await
    }
}
