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

use super::workflow::{live_version, refused, Workflow};
use super::FhirService;
use crate::auth::Access;
use crate::model::{ErrorKind, IssueCode};
use crate::portal::scheduling::{
    expected_slot_status, held_slot_ids, is_bookable, span_of, status_of, times_disagree, HoldExpiry, HOLDING_STATUSES,
    HOLD_EXPIRY_JOB,
};
use crate::store::{IndexRows, ResourceVersion, SearchQuery, StoreError, StoreResult, StoreTx, WriteMethod};

/// A write transaction that keeps the scheduling invariant (see the module documentation).
pub(super) struct SchedulingTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The Appointments written here, as they were before this transaction.
    appointments: BTreeMap<String, Before>,
    /// The Slots the caller wrote here.
    slots: BTreeSet<String>,
}

/// An Appointment as it was before the transaction wrote it.
#[derive(Clone)]
struct Before {
    status: String,
    /// The Slots it held.
    held: Vec<String>,
}

/// What the transaction did to one Appointment it wrote.
struct Change {
    id: String,
    before: Before,
    /// Its final version (`None`: deleted).
    after: Option<Value>,
    held: Vec<String>,
}

impl Change {
    fn released(&self) -> impl Iterator<Item = &String> {
        self.before.held.iter().filter(|slot| !self.held.contains(slot))
    }

    fn taken(&self) -> impl Iterator<Item = &String> {
        self.held.iter().filter(|slot| !self.before.held.contains(slot))
    }
}

/// The Slots of a settlement, read under their locks (`None`: none, or deleted).
type LockedSlots = BTreeMap<String, Option<(ResourceVersion, Value)>>;

impl SchedulingTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access) -> Self {
        SchedulingTx { inner, service, access, appointments: BTreeMap::new(), slots: BTreeSet::new() }
    }

    /// Notes an Appointment about to be written for the first time here: what it was before.
    async fn note_appointment(&mut self, version: &ResourceVersion) -> StoreResult<()> {
        if self.appointments.contains_key(&version.id) {
            return Ok(());
        }
        let before = live_version(self.inner.as_mut(), "Appointment", &version.id).await?;
        let base_url = &self.service.config.base_url;
        let before = match &before {
            Some((_, appointment)) => {
                Before { status: status_of(appointment).to_string(), held: held_slot_ids(appointment, base_url) }
            }
            None => Before { status: String::new(), held: Vec::new() },
        };
        self.appointments.insert(version.id.clone(), before);
        Ok(())
    }

    /// Applies the scheduling rules to every Slot the transaction concerns (see the module
    /// documentation), in the order of their ids so that concurrent transactions lock them in
    /// one order; then queues the expiry of the holds it made.
    async fn settle_slots(&mut self) -> StoreResult<()> {
        let base_url = self.service.config.base_url.clone();
        let mut changes = Vec::new();
        for (id, before) in self.appointments.clone() {
            let after =
                live_version(self.inner.as_mut(), "Appointment", &id).await?.map(|(_, appointment)| appointment);
            let held = after.as_ref().map(|a| held_slot_ids(a, &base_url)).unwrap_or_default();
            changes.push(Change { id, before, after, held });
        }
        let by_appointments: BTreeSet<String> =
            changes.iter().flat_map(|c| c.before.held.iter().chain(&c.held)).cloned().collect();
        let concerned: BTreeSet<String> = by_appointments.iter().chain(&self.slots).cloned().collect();
        let mut slots = LockedSlots::new();
        for id in concerned {
            let slot = live_version(self.inner.as_mut(), "Slot", &id).await?;
            slots.insert(id, slot);
        }
        for change in &changes {
            self.check_appointment(change, &slots)?;
        }
        for (slot_id, slot) in slots {
            // A Slot the caller wrote beside no Appointment of it keeps the status the caller
            // gave, or is refused; one booked or cancelled here follows its Appointment.
            let written_by_caller = self.slots.contains(&slot_id);
            let set_by_caller = written_by_caller && !by_appointments.contains(&slot_id);
            self.settle_slot(&slot_id, slot, set_by_caller).await?;
            if written_by_caller {
                self.check_holder_times(&slot_id).await?;
            }
        }
        self.queue_hold_expiries(&changes).await
    }

    /// The rules of one Appointment written here: the Slots it holds exist and its times are
    /// theirs; and for patients, a Slot it takes starts in the future and a Slot a booked
    /// appointment gives up does not start within the cut-off.
    fn check_appointment(&self, change: &Change, slots: &LockedSlots) -> StoreResult<()> {
        let id = &change.id;
        let slot = |slot_id: &String| slots.get(slot_id).and_then(Option::as_ref).map(|(_, s)| s);
        if let Some(appointment) = change.after.as_ref().filter(|_| !change.held.is_empty()) {
            let mut named = Vec::new();
            for slot_id in &change.held {
                let Some(found) = slot(slot_id) else {
                    let message = format!("Appointment/{id} names Slot/{slot_id}, which does not exist");
                    return Err(refused(ErrorKind::Unprocessable, IssueCode::NotFound, message));
                };
                named.push((slot_id.clone(), found.clone()));
            }
            if let Some(why) = times_disagree(appointment, &named) {
                let message = format!("Appointment/{id}: {why}");
                return Err(refused(ErrorKind::Unprocessable, IssueCode::BusinessRule, message));
            }
        }
        if !self.access.writes_for_patients("Appointment") {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let starts = |slot_id: &String| slot(slot_id).and_then(span_of).map(|span| span.start);
        if let Some(past) = change.taken().find(|slot_id| starts(slot_id).is_some_and(|start| start <= now)) {
            let message = format!("Slot/{past} is in the past: it can no longer be booked");
            return Err(refused(ErrorKind::Unprocessable, IssueCode::BusinessRule, message));
        }
        let Some(cutoff) = self.service.config.scheduling.cancel_cutoff else { return Ok(()) };
        // A hold (`pending`) may always be let go; a booking not within the cut-off.
        if change.before.status == "pending" {
            return Ok(());
        }
        if let Some(near) = change.released().find(|slot_id| starts(slot_id).is_some_and(|start| start - now < cutoff))
        {
            let message = format!(
                "Appointment/{id} (Slot/{near}) starts within {} hours: it can no longer be cancelled or moved online; \
                 please call the clinic",
                cutoff.whole_minutes() as f64 / 60.0
            );
            return Err(refused(ErrorKind::Unprocessable, IssueCode::BusinessRule, message));
        }
        Ok(())
    }

    /// When the caller wrote a held Slot, its holder's times must still be its Slots' (a Slot
    /// moved under a booking would leave the patient with a time nobody keeps).
    async fn check_holder_times(&mut self, slot_id: &str) -> StoreResult<()> {
        let Some((holder, _)) = self.holders(slot_id).await?.into_iter().next() else { return Ok(()) };
        if self.appointments.contains_key(&holder) {
            return Ok(()); // checked with the Appointments written here
        }
        let Some((_, appointment)) = live_version(self.inner.as_mut(), "Appointment", &holder).await? else {
            return Ok(());
        };
        let mut named = Vec::new();
        for id in held_slot_ids(&appointment, &self.service.config.base_url) {
            if let Some((_, slot)) = live_version(self.inner.as_mut(), "Slot", &id).await? {
                named.push((id, slot));
            }
        }
        match times_disagree(&appointment, &named) {
            None => Ok(()),
            Some(why) => Err(refused(
                ErrorKind::Conflict,
                IssueCode::Conflict,
                format!(
                    "Slot/{slot_id} is held by Appointment/{holder}, whose times would no longer be its Slots': {why}"
                ),
            )),
        }
    }

    /// Queues the end of each hold made here (an Appointment that became `pending`, by `$hold`
    /// or any other write): a job no worker claims before `--hold-seconds` have passed.
    async fn queue_hold_expiries(&mut self, changes: &[Change]) -> StoreResult<()> {
        let until = OffsetDateTime::now_utc() + self.service.config.scheduling.hold;
        for change in changes {
            let now_pending = change.after.as_ref().is_some_and(|a| status_of(a) == "pending");
            if now_pending && change.before.status != "pending" {
                let parameters = serde_json::to_string(&HoldExpiry { appointment: change.id.clone() })
                    .map_err(|error| StoreError::Busy(error.to_string()))?;
                self.inner.enqueue_job(HOLD_EXPIRY_JOB, &parameters, until).await?;
            }
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

#[async_trait]
impl Workflow for SchedulingTx {
    fn inner(&mut self) -> &mut dyn StoreTx {
        self.inner.as_mut()
    }

    fn into_inner(self) -> Box<dyn StoreTx> {
        self.inner
    }

    async fn note(&mut self, version: &ResourceVersion, _rows: &IndexRows) -> StoreResult<()> {
        match version.resource_type.as_str() {
            "Appointment" => self.note_appointment(version).await?,
            // A Slot created free (or blocked) cannot be held by an Appointment of an earlier
            // transaction, which would have been refused for naming a missing Slot: nothing to
            // settle unless an Appointment of this one names it ($generate-slots writes
            // thousands).
            "Slot" if !(version.version == 1 && is_unheld_create(version)) => {
                self.slots.insert(version.id.clone());
            }
            _ => {}
        }
        Ok(())
    }

    async fn settle(&mut self) -> StoreResult<()> {
        self.settle_slots().await
    }
}
