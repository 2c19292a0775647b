//! The hash chain over the audit log (ADR 19): sealing gives each recorded event the next
//! position and `SHA-256(previous hash, position, body)` (a spool's batch as it is inserted,
//! ADR 21; the events of writes, in recording order, within a second); a change to
//! a sealed event's body, a removed event or a cut end shows when the chain is walked again
//! (`hearth audit verify`). Retention removes a prefix and keeps its last hash as the anchor
//! the walk starts from.

use sha2::{Digest, Sha256};

use serde_json::Value;

use crate::store::audit::ChainLink;
use crate::store::{Store, StoreResult};

/// Events read per page while walking the chain.
const PAGE: usize = 1000;

/// The hash of the link at `position` after the link hashed `previous` (hex).
pub fn link_hash(previous: &str, position: i64, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(position.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Seals every event recorded so far, in pages; how many it sealed.
pub async fn seal(store: &dyn Store) -> StoreResult<usize> {
    let mut sealed = 0;
    loop {
        let page = store.seal_audit(PAGE, link_hash).await?;
        sealed += page;
        if page < PAGE {
            return Ok(sealed);
        }
    }
}

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The links checked.
    pub checked: u64,
    /// Where the walk started (the anchor retention left: position and hash) and ended.
    pub anchor: (i64, String),
    pub head: (i64, String),
    /// The first position where the chain does not follow, and why.
    pub first_break: Option<(i64, String)>,
}

/// Walks the chain from its anchor to the head sealed when the walk began (what is sealed
/// meanwhile is left for the next walk; a retention run meanwhile moves the start). Each link
/// must follow the one before it, and its `recorded` column and its patients' index rows must
/// say what its body says.
pub async fn verify(store: &dyn Store) -> StoreResult<Verification> {
    let ends = store.audit_chain_ends().await?;
    let head = ends.head_position;
    let mut walk = Verification {
        checked: 0,
        anchor: (ends.anchor_position, ends.anchor_hash),
        head: (head, String::new()),
        first_break: None,
    };
    let (mut position, mut hash) = walk.anchor.clone();
    while position < head {
        let links = store.audit_chain(position, PAGE).await?;
        if links.is_empty() {
            if let Some(start) = moved_anchor(store, &mut walk, position).await? {
                (position, hash) = start;
                continue;
            }
            walk.first_break =
                Some((position + 1, format!("the chain ends at position {position}, but {head} were sealed")));
            return Ok(walk);
        }
        for link in &links {
            if position >= head {
                break;
            }
            let expected = position + 1;
            if link.position != expected {
                if let Some(start) = moved_anchor(store, &mut walk, position).await? {
                    (position, hash) = start;
                    break;
                }
                let why = format!("the events at positions {expected} to {} are missing", link.position - 1);
                walk.first_break = Some((expected, why));
                return Ok(walk);
            }
            hash = link_hash(&hash, link.position, &link.body);
            if hash != link.hash {
                let why = "the event's content or hash was changed after it was sealed".to_string();
                walk.first_break = Some((link.position, why));
                return Ok(walk);
            }
            if let Some(why) = disagreement(link) {
                walk.first_break = Some((link.position, why));
                return Ok(walk);
            }
            position = link.position;
            walk.checked += 1;
        }
    }
    walk.head = (position, hash);
    Ok(walk)
}

/// Where the walk starts again when retention has removed a prefix past `position` since it
/// began (the anchor it left), or `None` when the anchor has not moved past it.
async fn moved_anchor(store: &dyn Store, walk: &mut Verification, position: i64) -> StoreResult<Option<(i64, String)>> {
    let now = store.audit_chain_ends().await?;
    if now.anchor_position <= position {
        return Ok(None);
    }
    walk.anchor = (now.anchor_position, now.anchor_hash.clone());
    walk.checked = 0;
    Ok(Some((now.anchor_position, now.anchor_hash)))
}

/// What a link's columns say that its body does not (the columns searches and retention read
/// are not in the hash; they must agree with what is).
fn disagreement(link: &ChainLink) -> Option<String> {
    // The base URL rendered into the event is none of the columns'.
    let Some(event) = super::balp::render(&link.body, "") else {
        return Some("the event's content is not an AuditEvent".into());
    };
    let recorded = event.get("recorded").and_then(Value::as_str).and_then(crate::model::resource::parse_instant);
    if recorded.map(|at| (at.unix_timestamp_nanos() / 1_000) as i64) != Some(link.recorded) {
        return Some("the event's recorded time in the database differs from the sealed one".into());
    }
    let mut patients: Vec<String> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| entity.pointer("/role/code") == Some(&Value::from("1")))
        .filter_map(|entity| entity.pointer("/what/reference").and_then(Value::as_str))
        .filter_map(|reference| reference.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect();
    patients.sort_unstable();
    (patients != link.patients).then(|| "the patients the event is indexed under differ from the sealed ones".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_depends_on_the_one_before() {
        let first = link_hash("", 1, b"a");
        assert_eq!(first.len(), 64);
        assert_ne!(link_hash(&first, 2, b"b"), link_hash("", 2, b"b"));
        assert_ne!(link_hash(&first, 2, b"b"), link_hash(&first, 3, b"b"));
        assert_eq!(link_hash(&first, 2, b"b"), link_hash(&first, 2, b"b"));
    }
}
