//! The hash chain over the audit log (ADR 19): sealing gives each recorded event, in
//! recording order, the next position and `SHA-256(previous hash, position, body)`; a change to
//! a sealed event's body, a removed event or a cut end shows when the chain is walked again
//! (`hearth audit verify`). Retention removes a prefix and keeps its last hash as the anchor
//! the walk starts from.

use sha2::{Digest, Sha256};

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
    /// The first position where the chain does not follow, and why.
    pub first_break: Option<(i64, String)>,
}

/// Walks the chain from its anchor to its head.
pub async fn verify(store: &dyn Store) -> StoreResult<Verification> {
    let ends = store.audit_chain_ends().await?;
    let (mut position, mut hash) = (ends.anchor_position, ends.anchor_hash);
    let mut checked = 0;
    loop {
        let links = store.audit_chain(position, PAGE).await?;
        for link in &links {
            let expected = position + 1;
            if link.position != expected {
                let why = format!("the events at positions {expected} to {} are missing", link.position - 1);
                return Ok(Verification { checked, first_break: Some((expected, why)) });
            }
            hash = link_hash(&hash, link.position, &link.body);
            if hash != link.hash {
                let why = "the event's content or hash was changed after it was sealed".to_string();
                return Ok(Verification { checked, first_break: Some((link.position, why)) });
            }
            position = link.position;
            checked += 1;
        }
        if links.len() < PAGE {
            break;
        }
    }
    if position != ends.head_position {
        let why = format!("the chain ends at position {position}, but {} were sealed", ends.head_position);
        return Ok(Verification { checked, first_break: Some((position + 1, why)) });
    }
    Ok(Verification { checked, first_break: None })
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
