//! E-mail through an SMTP server (lettre). What the server e-mails is queued in the database as
//! a job of kind [`MAIL_JOB`] and sent by whichever node claims it, never inside an HTTP
//! request; a failed send is tried again later. A queued e-mail names its purpose, not its
//! text: a one-time link is minted when the e-mail is sent, so no working link ever rests in
//! the database, and e-mails carry no health data.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::store::{Job, Store, StoreResult};

/// The job kind of queued e-mails.
pub const MAIL_JOB: &str = "mail";

/// How many times an e-mail is tried before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;

/// How long to wait before try `attempt` (2, 3, …): 1, 4, 16, 64 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(60 * 4u64.pow(attempt.saturating_sub(2)))
}

/// A queued e-mail: what it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    pub purpose: Purpose,
    /// Which try this is (1 for the first).
    #[serde(default = "first")]
    pub attempt: u32,
}

fn first() -> u32 {
    1
}

/// What an e-mail is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Purpose {
    /// An invitation to register, for the person `fhir_user` names, sent `to` an address.
    Invitation { fhir_user: String, to: String },
    /// A password reset link for the account a person named by its username or e-mail address
    /// (sent to the e-mail address of the account's resource; nothing when there is none, and
    /// the person who asked is not told which).
    PasswordReset { account: String },
}

impl Queued {
    /// The first try of an e-mail for `purpose`.
    pub fn new(purpose: Purpose) -> Self {
        Queued { purpose, attempt: 1 }
    }
}

/// Queues `queued` as a job of kind [`MAIL_JOB`] (any node's worker sends it); answers the job.
pub async fn queue(store: &dyn Store, queued: &Queued) -> StoreResult<Job> {
    let parameters = serde_json::to_string(queued).expect("a queued e-mail serialises");
    store.enqueue_job(MAIL_JOB, &parameters).await
}

/// The first e-mail address among a FHIR resource's `telecom` (a Patient's, a RelatedPerson's).
pub fn telecom_email(resource: &serde_json::Value) -> Option<String> {
    telecom_emails(resource).next().map(str::to_string)
}

/// Every e-mail address among a FHIR resource's `telecom`.
pub fn telecom_emails(resource: &serde_json::Value) -> impl Iterator<Item = &str> {
    let telecom = resource["telecom"].as_array().into_iter().flatten();
    telecom.filter(|t| t["system"] == "email").filter_map(|t| t["value"].as_str())
}

/// Where e-mail goes: `--smtp-url`, `--mail-from`.
#[derive(Debug, Clone, Default)]
pub struct MailSettings {
    /// `smtp://host:port` (plain; add `?tls=required` for STARTTLS) or `smtps://host:port`
    /// (implicit TLS); credentials in the URL or from `HEARTH_SMTP_USERNAME` and
    /// `HEARTH_SMTP_PASSWORD`. No e-mail is sent without one.
    pub smtp_url: Option<String>,
    /// The sender (`Clinic <no-reply@clinic.example>`).
    pub from: String,
}

/// Sends e-mail, when the operator gave an SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("sends", &self.transport.is_some()).field("from", &self.from).finish()
    }
}

impl Mailer {
    /// A mailer for `settings`; an error says what is wrong with them.
    pub fn new(settings: &MailSettings) -> Result<Mailer, String> {
        let from = address(&settings.from).map_err(|e| format!("--mail-from: {e}"))?;
        let Some(url) = &settings.smtp_url else { return Ok(Mailer { transport: None, from }) };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| format!("--smtp-url: {e}"))?;
        if let (Ok(username), Ok(password)) =
            (std::env::var("HEARTH_SMTP_USERNAME"), std::env::var("HEARTH_SMTP_PASSWORD"))
        {
            builder = builder.credentials(Credentials::new(username, password));
        }
        Ok(Mailer { transport: Some(builder.timeout(Some(Duration::from_secs(30))).build()), from })
    }

    /// A mailer that sends nothing.
    pub fn off() -> Mailer {
        Mailer { transport: None, from: "Hearth <no-reply@localhost>".parse().expect("a valid address") }
    }

    /// Whether e-mail is sent at all.
    pub fn sends(&self) -> bool {
        self.transport.is_some()
    }

    /// Sends a plain-text e-mail; the error says why the server did not take it.
    pub async fn send(&self, to: &str, subject: &str, text: String) -> Result<(), String> {
        let transport = self.transport.as_ref().ok_or("no SMTP server is configured")?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(address(to)?)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| e.to_string())?;
        transport.send(message).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// An e-mail address (or `Name <address>`); refuses what is not one, line breaks included.
pub fn address(text: &str) -> Result<Mailbox, String> {
    if text.contains(['\r', '\n']) {
        return Err("an e-mail address has no line breaks".into());
    }
    text.trim().parse::<Mailbox>().map_err(|e| format!("'{text}' is not an e-mail address ({e})"))
}

/// The password reset e-mail.
pub fn password_reset_text(link: &str) -> (String, String) {
    let subject = "Reset your password".to_string();
    let text = format!(
        "Hello,\r\n\r\nSomeone asked to reset the password of your account for your health records.\r\n\
         Open this link within an hour to choose a new one (it works once):\r\n\r\n{link}\r\n\r\n\
         Choosing a new password signs you out everywhere. If you did not ask, ignore this e-mail:\r\n\
         your password stays as it is.\r\n"
    );
    (subject, text)
}

/// A subscription's e-mail: that something new is waiting (the topic's title, such as "A
/// result was finalised"), never what it is; the person signs in to see it.
pub fn notification_text(what: &str) -> (String, String) {
    let subject = "Something new in your health records".to_string();
    let what = match what.trim() {
        "" => String::new(),
        what => format!(" ({})", what.replace(['\r', '\n'], " ")),
    };
    let text = format!(
        "Hello,\r\n\r\nThere is something new in your health records{what}.\r\n\
         Sign in to your patient portal to see it.\r\n"
    );
    (subject, text)
}

/// The invitation e-mail: the link, and nothing about the person's health.
pub fn invitation_text(link: &str, valid_for: time::Duration) -> (String, String) {
    let days = valid_for.whole_days().max(1);
    let subject = "Your invitation to your health records".to_string();
    let text = format!(
        "Hello,\r\n\r\nYour clinic invites you to see your health records online.\r\n\
         Open this link to create your account (it works once, for {days} days):\r\n\r\n{link}\r\n\r\n\
         You will be asked for your date of birth. If you did not expect this e-mail, ignore it.\r\n"
    );
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_retries_back_off() {
        assert!(address("ana@example.org").is_ok());
        assert!(address("Ana Rivera <ana@example.org>").is_ok());
        assert!(address("ana@example.org\r\nBcc: all@example.org").is_err());
        assert!(address("not an address").is_err());
        assert_eq!(retry_delay(2), Duration::from_secs(60));
        assert_eq!(retry_delay(5), Duration::from_secs(64 * 60));
    }
}
