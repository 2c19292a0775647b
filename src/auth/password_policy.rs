//! What a new password must be: at least 12 characters, without the username, and not easy to
//! guess. "Easy to guess" is zxcvbn's judgement (Dropbox's estimator, with its lists of the most
//! common passwords, names and words, and keyboard and date patterns), given the person's own
//! details too; a score below 3 ("safely unguessable" against online attacks) is refused.

use zxcvbn::{zxcvbn, Score};

/// The fewest characters a password may have.
pub const MIN_LENGTH: usize = 12;

/// The most characters a password may have: room for any passphrase (OWASP asks for at least
/// 64), and a bound on the estimator's work, which grows faster than the length.
pub const MAX_LENGTH: usize = 256;

/// Why `password` may not be chosen by `username` (whose `personal` details, such as a birth
/// date or a name, it should not be built from), or `None` when it may.
pub fn password_problem(password: &str, username: &str, personal: &[&str]) -> Option<String> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Some(format!("A password needs at least {MIN_LENGTH} characters."));
    }
    if length > MAX_LENGTH {
        return Some(format!("A password has at most {MAX_LENGTH} characters."));
    }
    if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
        return Some("A password may not contain the username.".into());
    }
    let inputs: Vec<&str> = std::iter::once(username).chain(personal.iter().copied()).collect();
    let estimate = zxcvbn(password, &inputs);
    if estimate.score() >= Score::Three {
        return None;
    }
    let warning = estimate.feedback().and_then(|f| f.warning()).map(|w| format!(" {w}")).unwrap_or_default();
    Some(format!("This password is too easy to guess.{warning} Add more words or characters that are not a pattern."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_common_and_personal_passwords_are_refused() {
        assert!(password_problem("Tr0ub4dor&3", "ana", &[]).unwrap().contains("12 characters"));
        assert!(password_problem("ana-is-the-best-2024", "ana", &[]).unwrap().contains("username"));
        assert!(password_problem("password1234", "ana", &[]).unwrap().contains("too easy"));
        assert!(password_problem("qwertyuiopasdf", "ana", &[]).unwrap().contains("too easy"));
        assert!(password_problem("Garcia19800201", "ana", &["Garcia", "1980-02-01"]).is_some());
        assert_eq!(password_problem("violet kettle drums at noon", "ana", &[]), None);
        assert!(password_problem(&"violet kettle ".repeat(20), "ana", &[]).unwrap().contains("at most 256"));
    }
}
