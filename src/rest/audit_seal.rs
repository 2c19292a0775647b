//! The node's share of keeping the audit log (ADR 19): sealing recorded AuditEvents into the
//! hash chain every second, and removing those past `--audit-retention-days` every hour. Each
//! run locks the chain's head, so nodes take turns; what one node sealed, the next finds done.

use std::time::Duration;

use super::FhirService;

/// How often new events are sealed.
const SEAL_EVERY: Duration = Duration::from_secs(1);

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Events removed per transaction by retention.
const FORGET_PAGE: usize = 10_000;

impl FhirService {
    /// Seals and applies retention until the process ends.
    pub(super) async fn run_audit_chain(self) {
        let mut retention_due = tokio::time::Instant::now();
        loop {
            if let Err(error) = crate::audit::chain::seal(self.store.as_ref()).await {
                tracing::warn!(%error, "cannot seal AuditEvents");
            }
            if let Some(keep) = self.config.audit.retention {
                if tokio::time::Instant::now() >= retention_due {
                    retention_due += RETENTION_EVERY;
                    self.forget_audit(time::OffsetDateTime::now_utc() - keep).await;
                }
            }
            tokio::time::sleep(SEAL_EVERY).await;
        }
    }

    /// Removes the sealed events recorded before `before`, a page at a time.
    async fn forget_audit(&self, before: time::OffsetDateTime) {
        loop {
            match self.store.forget_audit(before, FORGET_PAGE).await {
                Ok(removed) if removed > 0 => tracing::info!(removed, "AuditEvents past retention removed"),
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot remove AuditEvents past retention");
                    return;
                }
            }
        }
    }
}
