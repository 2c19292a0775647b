//! `AuditEvent` read and search, served from the audit tables (ADR 19): `patient`, `date`,
//! `action`, `agent`, `_sort=date|-date`, `_count`, paged by recording order. A caller whose
//! AuditEvent access is limited to some patients (a patient's or a proxy's token) finds only
//! the events about those patients, each checked against its rule, and sees them without the
//! other patients they name or the query they ran (see [`balp::shown_to_patient`]).

use bytes::Bytes;
use serde_json::{json, Value};

use super::bundle_writer::BundleWriter;
use super::{Body, FhirRequest, FhirResponse, FhirService};
use crate::audit::{balp, Disclosed, RequestTrail};
use crate::auth::scope::Permission;
use crate::auth::{Access, Restriction, Rule};
use crate::model::FhirError;
use crate::search::index::{index_selected, parse_local_reference};
use crate::store::audit::{AuditQuery, StoredAuditEvent};
use crate::store::{Comparison, Condition};

/// The most `patient`, `agent` and `action` values one search takes.
const MAX_VALUES: usize = 100;

/// An event as a caller may see it.
struct Shown {
    id: String,
    recorded: Option<time::OffsetDateTime>,
    /// Its JSON.
    body: Bytes,
}

/// The caller's own `fhirUser`, when a user's token.
fn viewer(access: &Access) -> Option<&str> {
    match access {
        Access::Token(grant) => grant.fhir_user.as_deref(),
        Access::Open => None,
    }
}

/// Whose events a caller reaches.
enum Reach {
    Every,
    /// Only events about these patients that its rule admits.
    Patients(Vec<String>, std::sync::Arc<Rule>),
}

impl FhirService {
    /// `GET AuditEvent/[id]` (and its only version, 1).
    pub(super) async fn read_audit_event(&self, access: &Access, id: &str) -> Result<FhirResponse, FhirError> {
        let reach = self.audit_reach(access, Permission::Read)?;
        self.recorder.flush().await;
        let stored = self.store.audit_event(id).await.map_err(super::store_error)?;
        let not_found = || FhirError::not_found(format!("AuditEvent/{id} is not known"));
        let shown = stored.and_then(|event| self.shown(access, &reach, event)).ok_or_else(not_found)?;
        Ok(FhirResponse {
            version: Some(1),
            last_modified: shown.recorded,
            ..FhirResponse::new(200, Body::Raw(shown.body))
        })
    }

    /// `GET AuditEvent?…`.
    pub(super) async fn search_audit_events(&self, request: &FhirRequest) -> Result<FhirResponse, FhirError> {
        let reach = self.audit_reach(&request.access, Permission::Search)?;
        let (mut query, applied) = self.audit_query(request)?;
        if let Reach::Patients(reachable, _) = &reach {
            query.patients = Some(match query.patients.take() {
                Some(asked) => asked.into_iter().filter(|p| reachable.contains(p)).collect(),
                None => reachable.clone(),
            });
            // Whether another patient, caregiver or person acted on their records is not
            // theirs to ask: such `agent` values find nothing.
            let viewer = viewer(&request.access);
            let concealed = |agent: &String| {
                viewer != Some(agent.as_str())
                    && (agent.starts_with("RelatedPerson/")
                        || agent.starts_with("Person/")
                        || agent.strip_prefix("Patient/").is_some_and(|id| !reachable.iter().any(|p| p == id)))
            };
            let asked = query.agents.len();
            query.agents.retain(|agent| !concealed(agent));
            if asked > 0 && query.agents.is_empty() {
                query.patients = Some(Vec::new());
            }
        }
        let count = query.limit;
        query.limit = count + 1;
        self.recorder.flush().await;
        let mut page = self.store.audit_events(&query).await.map_err(super::store_error)?;
        let next = (page.len() > count).then(|| {
            page.truncate(count);
            page.last().map(|event| event.seq)
        });
        let link = |cursor: Option<i64>| {
            let mut pairs = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in &applied {
                pairs.append_pair(name, value);
            }
            pairs.append_pair("_count", &count.to_string());
            if let Some(cursor) = cursor {
                pairs.append_pair("_cursor", &cursor.to_string());
            }
            format!("{}/AuditEvent?{}", self.config.base_url, pairs.finish())
        };
        let mut links = vec![("self", link(query.after)), ("first", link(None))];
        if let Some(Some(cursor)) = next {
            links.push(("next", link(Some(cursor))));
        }
        let mut bundle = BundleWriter::new("searchset", None, &links);
        for event in page {
            let Some(shown) = self.shown(&request.access, &reach, event) else { continue };
            let url = format!("{}/AuditEvent/{}", self.config.base_url, shown.id);
            bundle.entry(&json!({"fullUrl": url, "search": {"mode": "match"}}), Some(&shown.body));
        }
        Ok(FhirResponse::new(200, Body::Raw(bundle.finish())))
    }

    /// Whose AuditEvents `access` reaches with `permission`; 403 when none.
    fn audit_reach(&self, access: &Access, permission: Permission) -> Result<Reach, FhirError> {
        let rule = self.rule(access, permission, "AuditEvent")?;
        let (Access::Token(grant), Some(rule)) = (access, rule) else { return Ok(Reach::Every) };
        if rule.restriction == Restriction::None {
            return Ok(Reach::Every);
        }
        let mut patients = grant.patients.clone();
        patients.extend(grant.user_patients.iter().flatten().cloned());
        patients.sort_unstable();
        patients.dedup();
        Ok(Reach::Patients(patients, rule))
    }

    /// A stored event as the caller may see it, or `None` when it may not; noted as disclosed
    /// for the AuditEvent of this very request (reading the log is audited too, as being about
    /// the patients the caller was shown).
    fn shown(&self, access: &Access, reach: &Reach, event: StoredAuditEvent) -> Option<Shown> {
        let Some(content) = balp::render(&event.body, &self.config.base_url) else {
            tracing::error!(seq = event.seq, "a stored AuditEvent cannot be rendered; it is left out");
            return None;
        };
        let id = content.get("id")?.as_str()?.to_string();
        let recorded = content.get("recorded").and_then(Value::as_str).and_then(crate::model::resource::parse_instant);
        let body: Bytes = match reach {
            Reach::Every => serde_json::to_vec(&content).ok()?.into(),
            Reach::Patients(patients, rule) => {
                // Judged on the event as stored, by the index rows its rule looks at.
                let rows =
                    index_selected(&self.registry(), &content, &self.config.base_url, |code| rule.needs_param(code));
                if !rule.restriction.admits("AuditEvent", &id, &rows) {
                    return None;
                }
                serde_json::to_vec(&balp::shown_to_patient(content, patients, viewer(access))).ok()?.into()
            }
        };
        RequestTrail::note_disclosed([Disclosed {
            resource_type: "AuditEvent".into(),
            id: id.clone(),
            body: body.clone(),
        }]);
        Some(Shown { id, recorded, body })
    }

    /// The store query of an AuditEvent search, and the parameters it applied (for links).
    fn audit_query(&self, request: &FhirRequest) -> Result<(AuditQuery, Vec<(String, String)>), FhirError> {
        let mut query =
            AuditQuery { newest_first: true, limit: self.config.paging.default_count, ..Default::default() };
        let mut applied = Vec::new();
        for (name, value) in &request.query {
            let values = || value.split(',').map(str::trim).filter(|v| !v.is_empty());
            match name.as_str() {
                "patient" => {
                    let ids = values().map(|v| self.local_id(v, "Patient")).collect::<Vec<_>>();
                    query.patients.get_or_insert_with(Vec::new).extend(ids);
                }
                "agent" => {
                    query.agents.extend(values().map(|v| match parse_local_reference(v, &self.config.base_url) {
                        Some((t, id)) => format!("{t}/{id}"),
                        None => v.to_string(),
                    }))
                }
                "action" => query.actions.extend(values().map(str::to_string)),
                "date" => narrow_dates(&mut query, value)?,
                "_sort" => {
                    query.newest_first = match value.as_str() {
                        "-date" => true,
                        "date" => false,
                        other => {
                            return Err(FhirError::bad_request(format!(
                                "_sort: AuditEvents sort by 'date' or '-date', not '{other}'"
                            )))
                        }
                    }
                }
                "_count" => {
                    let count: usize = value
                        .parse()
                        .map_err(|_| FhirError::bad_request(format!("_count: '{value}' is not a whole number")))?;
                    query.limit = count.clamp(1, self.config.paging.max_count);
                    continue;
                }
                "_cursor" => {
                    query.after = Some(
                        value
                            .parse()
                            .map_err(|_| FhirError::bad_request(format!("_cursor: '{value}' is not valid")))?,
                    );
                    continue;
                }
                other if request.conditions.strict => {
                    return Err(FhirError::bad_request(format!(
                        "AuditEvent search supports patient, date, action, agent, _sort, _count; not '{other}'"
                    )))
                }
                _ => continue,
            }
            applied.push((name.clone(), value.clone()));
        }
        let values = query.patients.as_ref().map_or(0, Vec::len) + query.agents.len() + query.actions.len();
        if values > MAX_VALUES {
            return Err(FhirError::bad_request(format!(
                "an AuditEvent search takes at most {MAX_VALUES} patient, agent and action values"
            )));
        }
        Ok((query, applied))
    }

    /// The id in a reference search value (`Patient/1`, an absolute URL of it, or `1`).
    fn local_id(&self, value: &str, resource_type: &str) -> String {
        match parse_local_reference(value, &self.config.base_url) {
            Some((t, id)) if t == resource_type => id.to_string(),
            _ => value.to_string(),
        }
    }
}

/// Narrows the recording interval by one `date` value (`ge2026-01-01`, `2026-03`, `lt…`).
fn narrow_dates(query: &mut AuditQuery, value: &str) -> Result<(), FhirError> {
    let Condition::Date { comparison, low, high, .. } = crate::search::criteria::parse_date("date".into(), value)?
    else {
        return Err(FhirError::internal());
    };
    let (from, until) = match comparison {
        Comparison::Eq => (Some(low), Some(high)),
        Comparison::Ge => (Some(low), None),
        Comparison::Gt => (Some(high), None),
        Comparison::Le => (None, Some(high)),
        Comparison::Lt => (None, Some(low)),
        _ => {
            return Err(FhirError::bad_request(format!(
                "date: AuditEvent search takes eq, ge, gt, le and lt; not '{value}'"
            )))
        }
    };
    if let Some(from) = from {
        query.from = Some(query.from.map_or(from, |f| f.max(from)));
    }
    if let Some(until) = until {
        query.until = Some(query.until.map_or(until, |u| u.min(until)));
    }
    Ok(())
}
