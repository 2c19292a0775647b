//! What an uploaded file may be: the rules a raw upload to Binary and `DocumentReference/$upload`
//! share. No larger than `--max-upload-bytes` (413), of a media type on the allow-list
//! (`--upload-types`, 415), and the bytes must be what their media type says (a "PDF" that is
//! not one is 415): their signature is matched by `infer`, text must be UTF-8 without control
//! characters.

use crate::model::{ErrorKind, FhirError, IssueCode};

/// What uploads may be (`hearth serve --max-upload-bytes`, `--upload-types`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRules {
    pub max_bytes: usize,
    /// Media types accepted, lower case, without parameters.
    pub types: Vec<String>,
}

/// The largest upload by default: 20 MiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 20 * 1024 * 1024;

/// The media types of uploads by default: documents and pictures a patient sends a clinic.
pub const DEFAULT_UPLOAD_TYPES: &str =
    "application/pdf,image/jpeg,image/png,image/gif,image/tiff,image/heif,text/plain";

impl Default for UploadRules {
    fn default() -> Self {
        UploadRules {
            max_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            types: DEFAULT_UPLOAD_TYPES.split(',').map(str::to_string).collect(),
        }
    }
}

impl UploadRules {
    /// Checks `bytes` declared as `media_type` (lower case, without parameters).
    pub fn check(&self, media_type: &str, bytes: &[u8]) -> Result<(), FhirError> {
        if bytes.len() > self.max_bytes {
            return Err(FhirError::new(
                ErrorKind::PayloadTooLarge,
                IssueCode::TooLong,
                format!("an upload may hold at most {} bytes; this one holds {}", self.max_bytes, bytes.len()),
            ));
        }
        if !self.types.iter().any(|t| t == media_type) {
            return Err(unsupported(format!(
                "uploads of {media_type} are not accepted; accepted: {}",
                self.types.join(", ")
            )));
        }
        if !is_what_it_claims(media_type, bytes) {
            return Err(unsupported(format!("the content is not {media_type}, as its media type says")));
        }
        Ok(())
    }
}

fn unsupported(message: String) -> FhirError {
    FhirError::new(ErrorKind::UnsupportedMediaType, IssueCode::NotSupported, message)
}

/// Whether `bytes` are of `media_type`: its signature, as `infer` knows them; text is UTF-8
/// without control characters other than whitespace.
fn is_what_it_claims(media_type: &str, bytes: &[u8]) -> bool {
    if media_type.starts_with("text/") {
        return std::str::from_utf8(bytes)
            .is_ok_and(|text| !text.chars().any(|c| c.is_control() && !c.is_whitespace()))
            && infer::get(bytes).is_none_or(|kind| kind.mime_type().starts_with("text/"));
    }
    infer::get(bytes).is_some_and(|kind| kind.mime_type() == media_type)
}
