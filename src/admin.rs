//! `hearth client …`, `hearth user …` and `hearth key …`: administration of the authorization
//! server's clients, users and signing keys, on the database a server uses. They touch only
//! the authorization records, so they may run while a server has the database open.

use std::io::BufRead;

use anyhow::{bail, Context};

use crate::auth::keys::{add_key, digest};
use crate::auth::password_reset::{reset_link, reset_token};
use crate::auth::records::{self, hash_password, ClientCredentials, ClientRecord, PasswordCost, UserRecord};
use crate::auth::registration::{invite, registration_link, InviteError};
use crate::auth::sign_out_everywhere;
use crate::config::{ClientCommand, KeyCommand, ProfilesCommand, UserCommand};
use crate::model::resource::is_valid_id;
use crate::store::Store;
use crate::validation::packages::{packages_in, read_package, unmet_dependencies, Package};
use crate::validation::Definitions;

/// Reads one line (a secret or password) from standard input.
fn read_secret(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).with_context(|| format!("cannot read the {what}"))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("the {what} on standard input is empty");
    }
    Ok(secret)
}

/// Carries out `hearth client …`; returns what to print.
pub async fn client(store: &dyn Store, command: ClientCommand) -> anyhow::Result<String> {
    match command {
        ClientCommand::Add {
            client_id,
            name,
            redirect_uri,
            public,
            secret_stdin,
            jwks_file,
            jwks_uri,
            scope,
            launch_uri,
        } => {
            if client_id.trim().is_empty() {
                bail!("--client-id must not be empty");
            }
            for uri in redirect_uri.iter().chain(&jwks_uri).chain(&launch_uri) {
                url::Url::parse(uri).with_context(|| format!("'{uri}' is not an absolute URL"))?;
            }
            let credentials = if public {
                ClientCredentials::Public
            } else if secret_stdin {
                ClientCredentials::Secret { digest: digest(&read_secret("client secret")?) }
            } else if let Some(path) = jwks_file {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let keys: jsonwebtoken::jwk::JwkSet =
                    serde_json::from_str(&text).with_context(|| format!("{} is not a JWKS", path.display()))?;
                if keys.keys.is_empty() {
                    bail!("{} holds no keys", path.display());
                }
                ClientCredentials::Jwks { jwks: text }
            } else if let Some(uri) = jwks_uri {
                ClientCredentials::JwksUri { uri }
            } else {
                bail!("give one of --public, --secret-stdin, --jwks-file, --jwks-uri");
            };
            let record = ClientRecord { client_id, name, credentials, redirect_uris: redirect_uri, scope, launch_uri };
            records::save_client(store, &record).await?;
            Ok(format!("registered client {}", record.client_id))
        }
        ClientCommand::List => {
            let mut out = String::from("client_id\tkind\tname\tredirect_uris\tscope\n");
            for c in records::clients(store).await? {
                let kind = match c.credentials {
                    ClientCredentials::Public => "public",
                    ClientCredentials::Secret { .. } => "secret",
                    ClientCredentials::Jwks { .. } => "jwks",
                    ClientCredentials::JwksUri { .. } => "jwks-uri",
                };
                out.push_str(&format!(
                    "{}\t{kind}\t{}\t{}\t{}\n",
                    c.client_id,
                    c.name.unwrap_or_default(),
                    c.redirect_uris.join(" "),
                    c.scope.unwrap_or_else(|| "(any)".into())
                ));
            }
            Ok(out.trim_end().to_string())
        }
        ClientCommand::Remove { client_id } => match records::remove_client(store, &client_id).await? {
            true => Ok(format!("removed client {client_id}")),
            false => bail!("there is no client {client_id}"),
        },
    }
}

/// Carries out `hearth user …` (links under the public `base_url`); returns what to print.
pub async fn user(
    store: &dyn Store,
    command: UserCommand,
    cost: PasswordCost,
    base_url: &str,
) -> anyhow::Result<String> {
    match command {
        UserCommand::Reset { username } => {
            existing_user(store, &username).await?;
            Ok(reset_link(base_url, &reset_token(store, &username).await?))
        }
        UserCommand::Invite { fhir_user, invite_ttl } => {
            let token = match invite(store, &fhir_user, invite_ttl).await {
                Ok(token) => token,
                Err(InviteError::Refused(why)) => bail!("{why}"),
                Err(InviteError::Store(error)) => return Err(error.into()),
            };
            Ok(registration_link(base_url, &token))
        }
        UserCommand::Add { username, password_stdin: _, fhir_user, patient } => {
            if username.trim().is_empty() {
                bail!("--username must not be empty");
            }
            let fhir_user = fhir_reference(
                &fhir_user,
                &["Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Person"],
            )?;
            let mut patients = patient
                .iter()
                .map(|p| fhir_reference(p, &["Patient"]).map(|r| r.trim_start_matches("Patient/").to_string()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(own) = fhir_user.strip_prefix("Patient/") {
                if !patients.iter().any(|p| p == own) {
                    patients.insert(0, own.to_string());
                }
            }
            let password_hash = hash_password(&read_secret("password")?, cost);
            records::save_user(store, &UserRecord::new(&username, password_hash, fhir_user, patients)).await?;
            Ok(format!("added user {username}"))
        }
        UserCommand::List => {
            let mut out = String::from("username\tfhir_user\tpatients\trelated\tstate\n");
            for u in records::users(store).await? {
                let state = if u.disabled { "disabled" } else { "enabled" };
                let (patients, related) = (u.patients.join(" "), u.related.join(" "));
                out.push_str(&format!("{}\t{}\t{patients}\t{related}\t{state}\n", u.username, u.fhir_user));
            }
            Ok(out.trim_end().to_string())
        }
        UserCommand::Remove { username } => match records::remove_user(store, &username).await? {
            true => Ok(format!("removed user {username}")),
            false => bail!("there is no user {username}"),
        },
        UserCommand::Passwd { username, password_stdin: _ } => {
            let mut found = existing_user(store, &username).await?;
            found.password_hash = hash_password(&read_secret("password")?, cost);
            sign_out_everywhere(store, found).await?;
            Ok(format!("changed the password of {username}; its sessions and tokens have ended"))
        }
        UserCommand::Disable { username } => {
            let mut found = existing_user(store, &username).await?;
            found.disabled = true;
            sign_out_everywhere(store, found).await?;
            Ok(format!("disabled {username}; its sessions and tokens have ended"))
        }
        UserCommand::Link { username, related_person } => {
            let id = related_person_id(&related_person)?;
            let mut found = existing_user(store, &username).await?;
            if found.is_clinician() {
                bail!("{username} is a clinician's account, which reaches every patient already");
            }
            if found.related_persons().contains(&id) {
                return Ok(format!("{username} already acts through {related_person}"));
            }
            found.related.push(id);
            records::save_user(store, &found).await?;
            Ok(format!("{username} acts through {related_person} while it is active and in its period"))
        }
        UserCommand::Unlink { username, related_person } => {
            let id = related_person_id(&related_person)?;
            let mut found = existing_user(store, &username).await?;
            if !found.related.contains(&id) {
                bail!("{username} is not linked to {related_person} (an account's own RelatedPerson is ended by editing it)");
            }
            found.related.retain(|r| *r != id);
            sign_out_everywhere(store, found).await?;
            Ok(format!("{username} no longer acts through {related_person}; its sessions and tokens have ended"))
        }
        UserCommand::Enable { username } => {
            let mut found = existing_user(store, &username).await?;
            found.disabled = false;
            records::save_user(store, &found).await?;
            Ok(format!("enabled {username}"))
        }
    }
}

/// Carries out `hearth key …`; returns what to print.
pub async fn key(store: &dyn Store, command: KeyCommand) -> anyhow::Result<String> {
    match command {
        KeyCommand::Rotate => Ok(format!("new signing key {}", add_key(store).await?)),
    }
}

/// `Type/id` with one of `types`.
fn fhir_reference(text: &str, types: &[&str]) -> anyhow::Result<String> {
    match text.split_once('/') {
        Some((t, id)) if types.contains(&t) && is_valid_id(id) => Ok(text.to_string()),
        _ => bail!("'{text}' must be a reference such as {}/123", types[0]),
    }
}

/// The id of a `RelatedPerson/id` reference.
fn related_person_id(text: &str) -> anyhow::Result<String> {
    Ok(fhir_reference(text, &["RelatedPerson"])?.trim_start_matches("RelatedPerson/").to_string())
}

/// The account `username`, or an error saying there is none.
async fn existing_user(store: &dyn Store, username: &str) -> anyhow::Result<UserRecord> {
    records::user(store, username).await?.with_context(|| format!("there is no user {username}"))
}

/// `hearth profiles add|list`: the packages `serve --profiles DIR` reads.
pub fn profiles(command: ProfilesCommand) -> anyhow::Result<String> {
    match command {
        ProfilesCommand::Add { package, profiles } => {
            let bytes = std::fs::read(&package).with_context(|| format!("cannot read {}", package.display()))?;
            let added = read_package(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", package.display()))?;
            std::fs::create_dir_all(&profiles).with_context(|| format!("cannot create {}", profiles.display()))?;
            let mut report = Vec::new();
            for (path, other) in packages_in(&profiles).map_err(anyhow::Error::msg)? {
                if other.name == added.name {
                    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                    report.push(format!("removed {} {} ({})", other.name, other.version, path.display()));
                }
            }
            let target = profiles.join(format!("{}-{}.tgz", added.name, added.version));
            std::fs::write(&target, &bytes).with_context(|| format!("cannot write {}", target.display()))?;
            report.push(format!("added {}: {}", target.display(), describe(&added)));
            let present: Vec<Package> =
                packages_in(&profiles).map_err(anyhow::Error::msg)?.into_iter().map(|(_, p)| p).collect();
            report.extend(unmet(&present));
            Ok(report.join("\n"))
        }
        ProfilesCommand::List { profiles } => {
            let present = packages_in(&profiles).map_err(anyhow::Error::msg)?;
            let mut report: Vec<String> =
                present.iter().map(|(path, p)| format!("{}: {}", path.display(), describe(p))).collect();
            if report.is_empty() {
                report.push(format!("no packages in {}", profiles.display()));
            }
            let present: Vec<Package> = present.into_iter().map(|(_, p)| p).collect();
            report.extend(unmet(&present));
            Ok(report.join("\n"))
        }
    }
}

/// A package's name and what the server uses of it.
fn describe(package: &Package) -> String {
    let definitions = Definitions::with(&package.resources.iter().collect::<Vec<_>>());
    let (structure_definitions, expanded) = definitions.added();
    let mut line = format!(
        "{} {}: {structure_definitions} StructureDefinitions used, {expanded} bound value sets expanded",
        package.name, package.version
    );
    for (url, why) in definitions.unusable_all() {
        line.push_str(&format!("\n  not used: {url}: {why}"));
    }
    line
}

fn unmet(packages: &[Package]) -> Vec<String> {
    unmet_dependencies(packages)
        .into_iter()
        .map(|dependency| format!("warning: depends on {dependency}, which is not in the folder: add it as well"))
        .collect()
}
