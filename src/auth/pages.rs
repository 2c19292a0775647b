//! The HTML pages of the authorization flow: login, consent, and errors. Every value written
//! into a page is escaped; every form carries the request id and its CSRF token.

/// Escapes text for HTML content and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Hearth</title>\
         <style>body{{font-family:Georgia,serif;background:#f6f4ef;color:#1f1f1f;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
         form{{background:#fff;padding:1.5rem;border-radius:6px}}label{{display:block;margin:.6rem 0}}\
         input[type=text],input[type=password]{{width:100%;padding:.4rem}}button{{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}}\
         .error{{color:#9e2a2b}}code{{font-size:.9em}}</style></head><body>{body}</body></html>",
        title = escape(title)
    )
}

/// Hidden fields that tie a form to its authorization request.
fn hidden(request: &str, csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"request\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(request),
        escape(csrf)
    )
}

/// The sign-in form.
pub(super) fn login(client_name: &str, request: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "<h1>Sign in</h1><p><strong>{client}</strong> asks to reach your health records.</p>{error}\
             <form method=\"post\" action=\"/auth/login\">{hidden}\
             <label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
             <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>",
            client = escape(client_name),
            hidden = hidden(request, csrf),
        ),
    )
}

/// A patient a proxy may choose.
pub(super) struct PatientChoice {
    pub id: String,
    pub label: String,
}

/// How the consent page asks for the patient in context (`launch/patient` without an EHR
/// launch).
pub(super) enum PatientPicker {
    /// It does not: no patient context, or the user's own.
    None,
    /// A proxy chooses one of their patients.
    Choices(Vec<PatientChoice>),
    /// A clinician names the patient by id.
    ById,
}

/// The consent form: one checkbox per requested scope, and the patient picker.
pub(super) fn consent(
    client_name: &str,
    username: &str,
    request: &str,
    csrf: &str,
    scopes: &[String],
    picker: &PatientPicker,
    error: Option<&str>,
) -> String {
    let scope_boxes: String = scopes
        .iter()
        .map(|scope| {
            format!(
                "<label><input type=\"checkbox\" name=\"scope\" value=\"{value}\" checked> <code>{value}</code></label>",
                value = escape(scope)
            )
        })
        .collect();
    let patient_choice = match picker {
        PatientPicker::None => String::new(),
        PatientPicker::ById => "<fieldset><legend>Patient</legend><label>Patient id \
             <input type=\"text\" name=\"patient\" required></label></fieldset>"
            .to_string(),
        PatientPicker::Choices(patients) => patient_options(patients),
    };
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    page(
        "Allow access",
        &format!(
            "<h1>Allow access</h1><p>Signed in as <strong>{user}</strong>. <strong>{client}</strong> asks for:</p>{error}\
             <form method=\"post\" action=\"/auth/consent\">{hidden}<fieldset><legend>Permissions</legend>{scope_boxes}</fieldset>\
             {patient_choice}\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>\
             <form method=\"post\" action=\"/auth/logout\">{hidden}<button type=\"submit\">Not {user}? Sign out</button></form>",
            user = escape(username),
            client = escape(client_name),
            hidden = hidden(request, csrf),
        ),
    )
}

/// A proxy's patients as radio buttons, the first one chosen.
fn patient_options(patients: &[PatientChoice]) -> String {
    let options: String = patients
        .iter()
        .enumerate()
        .map(|(n, p)| {
            format!(
                "<label><input type=\"radio\" name=\"patient\" value=\"{id}\"{checked}> {label}</label>",
                id = escape(&p.id),
                label = escape(&p.label),
                checked = if n == 0 { " checked" } else { "" }
            )
        })
        .collect();
    format!("<fieldset><legend>On behalf of</legend>{options}</fieldset>")
}

/// After signing out without a request to go back to.
pub(super) fn signed_out() -> String {
    page("Signed out", "<h1>Signed out</h1><p>You are signed out. Start again from the app to sign in.</p>")
}

/// The registration form of an invitation link: the person confirms their birth date and
/// chooses a username and password.
pub(super) fn register(token: &str, csrf: &str, may_link: bool, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let hidden = format!(
        "<input type=\"hidden\" name=\"token\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(token),
        escape(csrf)
    );
    let birth_date = "<label>Your date of birth <input type=\"date\" name=\"birth_date\" required></label>";
    // A caregiver invited for another patient adds the invitation to the account they have.
    let existing = if may_link {
        format!(
            "<h2>Already have an account?</h2><p>If you already see another person's records here, add this \
             one to your account.</p><form method=\"post\" action=\"/auth/register\">{hidden}\
             <input type=\"hidden\" name=\"existing\" value=\"1\">{birth_date}\
             <label>Your username <input type=\"text\" name=\"username\" autocomplete=\"username\" required \
             maxlength=\"64\"></label>\
             <label>Your password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" \
             required></label><button type=\"submit\">Add to my account</button></form>"
        )
    } else {
        String::new()
    };
    page(
        "Create your account",
        &format!(
            "<h1>Create your account</h1><p>Your clinic invited you to see health records online.</p>{error}\
             <form method=\"post\" action=\"/auth/register\">{hidden}{first_birth_date}\
             <label>Choose a username <input type=\"text\" name=\"username\" autocomplete=\"username\" required \
             minlength=\"3\" maxlength=\"64\"></label>\
             <label>Choose a password (at least {min} characters) <input type=\"password\" name=\"password\" \
             autocomplete=\"new-password\" required minlength=\"{min}\" maxlength=\"{max}\"></label>\
             <button type=\"submit\">Create account</button></form>{existing}",
            first_birth_date = birth_date.replace(" required>", " required autofocus>"),
            min = super::password_policy::MIN_LENGTH,
            max = super::password_policy::MAX_LENGTH,
        ),
    )
}

/// After adding an invitation to an existing account: signed in.
pub(super) fn linked(username: &str) -> String {
    page(
        "Access added",
        &format!(
            "<h1>Access added</h1><p><strong>{}</strong>, your account now reaches this person's records too. \
             You are signed in: go back to your clinic's app and choose whose records to see.</p>",
            escape(username)
        ),
    )
}

/// After registering: signed in.
pub(super) fn registered(username: &str) -> String {
    page(
        "Account created",
        &format!(
            "<h1>Account created</h1><p>Welcome, <strong>{}</strong>. You are signed in: go back to your \
             clinic's app to see your records.</p>",
            escape(username)
        ),
    )
}

/// Where a person asks for a password reset link (or learns that the clinic resets it, when
/// the server sends no e-mail).
pub(super) fn forgot(sends_email: bool, error: Option<&str>) -> String {
    if !sends_email {
        return page(
            "Forgot your password",
            "<h1>Forgot your password</h1><p>Ask your clinic to send you a link to choose a new password.</p>",
        );
    }
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    page(
        "Forgot your password",
        &format!(
            "<h1>Forgot your password</h1><p>We will e-mail you a link to choose a new one.</p>{error}\
             <form method=\"post\" action=\"/auth/forgot\">\
             <label>Username or e-mail address <input type=\"text\" name=\"account\" autocomplete=\"username\" \
             required autofocus maxlength=\"254\"></label><button type=\"submit\">Send the link</button></form>"
        ),
    )
}

/// After asking for a reset link: the same whether or not the account exists.
pub(super) fn reset_asked() -> String {
    page(
        "Check your e-mail",
        "<h1>Check your e-mail</h1><p>If an account with an e-mail address matches, we have sent it a link \
         to choose a new password. It works for an hour.</p>",
    )
}

/// The form of a reset link: the new password.
pub(super) fn reset(token: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    page(
        "Choose a new password",
        &format!(
            "<h1>Choose a new password</h1>{error}<form method=\"post\" action=\"/auth/reset\">\
             <input type=\"hidden\" name=\"token\" value=\"{token}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>New password (at least {min} characters) <input type=\"password\" name=\"password\" \
             autocomplete=\"new-password\" required minlength=\"{min}\" maxlength=\"{max}\" autofocus></label>\
             <button type=\"submit\">Change password</button></form>",
            token = escape(token),
            csrf = escape(csrf),
            min = super::password_policy::MIN_LENGTH,
            max = super::password_policy::MAX_LENGTH,
        ),
    )
}

/// After a new password: signed out everywhere.
pub(super) fn password_changed() -> String {
    page(
        "Password changed",
        "<h1>Password changed</h1><p>Your password is changed, and you are signed out everywhere. \
         Sign in again from your clinic's app.</p>",
    )
}

/// A page for errors that cannot be sent back to the client (unknown client, bad redirect).
pub(super) fn error(message: &str) -> String {
    page("Authorization error", &format!("<h1>Authorization error</h1><p class=\"error\">{}</p>", escape(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let html = consent(
            "<App>",
            "u",
            "r",
            "c",
            &["patient/Observation.rs?category=a&b".into()],
            &PatientPicker::None,
            None,
        );
        assert!(html.contains("value=\"patient/Observation.rs?category=a&amp;b\""));
        assert!(html.contains("&lt;App&gt;") && !html.contains("<App>"));
        assert!(
            html.contains("name=\"decision\" value=\"allow\"") && html.contains("name=\"decision\" value=\"deny\"")
        );
    }

    #[test]
    fn login_has_the_named_inputs() {
        let html = login("App", "req", "tok", Some("wrong"));
        for needle in ["name=\"username\"", "name=\"password\"", "type=\"submit\"", "value=\"req\"", "value=\"tok\""] {
            assert!(html.contains(needle), "{needle}");
        }
    }
}
