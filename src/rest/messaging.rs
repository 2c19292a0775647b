//! The messaging rules for patients and proxies, kept by the write transaction (a
//! [`Workflow`]), so that REST, bundles and operations obey them alike. A patient's or proxy's
//! token may:
//! - start a thread (a Communication with a `topic`, no `partOf`) or post into one of its
//!   patient's threads, as itself (`sender` its `fhirUser`, or its patient), about its patient
//!   (`subject`), to recipients of the patient's care team (those of the patient's Encounters
//!   and CareTeams) or of the clinic's list (`--message-recipients`);
//! - mark a message read (add `received`), and change nothing else: a message sent stays as
//!   it was (staff may still mark it `entered-in-error`).
//!
//! Everything else is 422 (the caller's reach was checked by the access guard already).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use super::workflow::{live, unprocessable, Workflow};
use super::FhirService;
use crate::auth::Access;
use crate::portal::messaging::{care_team, local, locals, only_marked_read};
use crate::store::{IndexRows, ResourceVersion, SearchQuery, StoreError, StoreResult, StoreTx};

/// A write transaction that keeps the messaging rules for patients.
pub(super) struct MessagingTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The Communications written here, as they were before (`None`: new).
    messages: BTreeMap<String, Option<Value>>,
}

impl MessagingTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access) -> Self {
        MessagingTx { inner, service, access, messages: BTreeMap::new() }
    }

    /// The caller's patients and who it is, when it is a patient or a proxy.
    fn patient_caller(&self) -> Option<(Vec<String>, Option<String>)> {
        let Access::Token(grant) = &self.access else { return None };
        if !self.access.writes_for_patients("Communication") {
            return None;
        }
        let patients = grant.user_patients.clone().unwrap_or_default().into_iter().chain(grant.patients.clone());
        let patients = patients.map(|id| format!("Patient/{id}")).collect();
        Some((patients, grant.fhir_user.clone()))
    }

    async fn check_messages(&mut self) -> StoreResult<()> {
        let Some((patients, user)) = self.patient_caller() else { return Ok(()) };
        for (id, before) in self.messages.clone() {
            let after = live(self.inner.as_mut(), "Communication", &id).await?;
            match (before, after) {
                (None, Some(message)) => self.check_new(&id, &message, &patients, user.as_deref()).await?,
                (Some(before), Some(after)) => {
                    let addressed = locals(&after, "recipient", &self.service.config.base_url)
                        .iter()
                        .any(|r| patients.contains(r) || Some(r.as_str()) == user.as_deref());
                    if !(addressed && only_marked_read(&before, &after)) {
                        return Err(unprocessable(format!(
                            "Communication/{id}: a message cannot be changed once sent (its recipient may mark it read)"
                        )));
                    }
                }
                (Some(_), None) => {
                    return Err(unprocessable(format!("Communication/{id}: a message cannot be deleted once sent")));
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    async fn check_new(
        &mut self,
        id: &str,
        message: &Value,
        patients: &[String],
        user: Option<&str>,
    ) -> StoreResult<()> {
        let base_url = self.service.config.base_url.clone();
        let sender = message.get("sender").and_then(|s| local(s, &base_url));
        let as_itself = sender.as_deref().is_some_and(|s| Some(s) == user || patients.iter().any(|p| p == s));
        if !as_itself {
            return Err(unprocessable(format!("Communication/{id}: its sender must be you")));
        }
        let subject = message.get("subject").and_then(|s| local(s, &base_url));
        let Some(patient) = subject.filter(|s| patients.contains(s)) else {
            return Err(unprocessable(format!("Communication/{id}: its subject must be the patient it is about")));
        };
        match locals(message, "partOf", &base_url).first() {
            Some(thread) => self.check_thread(id, thread, &patient).await?,
            None if message.get("topic").is_none() => {
                return Err(unprocessable(format!(
                    "Communication/{id}: a new thread needs a topic; a message in a thread names it in partOf"
                )));
            }
            None => {}
        }
        let recipients = locals(message, "recipient", &base_url);
        if recipients.is_empty() {
            return Err(unprocessable(format!("Communication/{id}: a message needs a recipient")));
        }
        let allowed = self.messageable(&patient).await?;
        if let Some(stranger) = recipients.iter().find(|r| !allowed.contains(*r)) {
            return Err(unprocessable(format!(
                "Communication/{id}: {stranger} is not among those the patient may message (their care team)"
            )));
        }
        Ok(())
    }

    /// A message's thread exists, is a thread, and is the patient's.
    async fn check_thread(&mut self, id: &str, thread: &str, patient: &str) -> StoreResult<()> {
        let base_url = self.service.config.base_url.clone();
        let found = match thread.split_once('/') {
            Some(("Communication", thread_id)) => live(self.inner.as_mut(), "Communication", thread_id).await?,
            _ => None,
        };
        let theirs = found.is_some_and(|t| {
            locals(&t, "partOf", &base_url).is_empty()
                && t.get("subject").and_then(|s| local(s, &base_url)).as_deref() == Some(patient)
        });
        if !theirs {
            return Err(unprocessable(format!("Communication/{id}: {thread} is not a thread of the patient's")));
        }
        Ok(())
    }

    /// Who the patient may message: their care team and the clinic's list.
    async fn messageable(&mut self, patient: &str) -> StoreResult<std::collections::BTreeSet<String>> {
        let mut found = Vec::new();
        for resource_type in ["Encounter", "CareTeam"] {
            let mut query = SearchQuery::new(resource_type, 1000);
            let criterion = self
                .service
                .criterion(resource_type, "patient", patient)
                .map_err(|error| StoreError::Refused(Box::new(error)))?;
            query.all_of.push(criterion);
            let page = self.inner.search(&query).await?;
            found.push(page.resources.iter().filter_map(|v| serde_json::from_slice(&v.body).ok()).collect::<Vec<_>>());
        }
        let mut allowed = care_team(&found[0], &found[1], &self.service.config.base_url);
        allowed.extend(self.service.config.messaging.recipients.iter().cloned());
        Ok(allowed)
    }
}

#[async_trait]
impl Workflow for MessagingTx {
    fn inner(&mut self) -> &mut dyn StoreTx {
        self.inner.as_mut()
    }

    fn into_inner(self) -> Box<dyn StoreTx> {
        self.inner
    }

    async fn note(&mut self, version: &ResourceVersion, _rows: &IndexRows) -> StoreResult<()> {
        let noted = self.messages.contains_key(&version.id);
        if version.resource_type == "Communication" && !noted && self.patient_caller().is_some() {
            let before = live(self.inner.as_mut(), "Communication", &version.id).await?;
            self.messages.insert(version.id.clone(), before);
        }
        Ok(())
    }

    async fn settle(&mut self) -> StoreResult<()> {
        self.check_messages().await
    }
}
