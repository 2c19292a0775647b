//! An export's files: one directory per job under the export directory, NDJSON part files
//! written under a temporary name and renamed once complete (and on disk), so that a name
//! without `.part` is always a whole file, and a job taken over removes what its last owner
//! left unfinished and writes it again from its last recorded position.

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::List;

/// What a part file buffers before it writes (few system calls, memory flat).
const BUFFER: usize = 1 << 20;

/// The suffix of a file being written.
const UNFINISHED: &str = ".part";

/// The directory of one export job.
#[derive(Debug, Clone)]
pub struct JobDir {
    path: PathBuf,
}

impl JobDir {
    pub fn new(root: &Path, job: i64) -> JobDir {
        JobDir { path: root.join(format!("job-{job}")) }
    }

    /// The directory `path` itself (`hearth export --out`).
    pub fn at(path: &Path) -> JobDir {
        JobDir { path: path.to_path_buf() }
    }

    /// The path of a finished file named `name`; `None` for a name that is not one of an
    /// export's files (nothing outside the directory can be named).
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && name.ends_with(".ndjson");
        plain.then(|| self.path.join(name))
    }

    /// Creates the directory and removes the unfinished files a previous owner left.
    pub async fn prepare(&self) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.path).await?;
        let mut entries = tokio::fs::read_dir(&self.path).await?;
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_name().to_string_lossy().ends_with(UNFINISHED) {
                tokio::fs::remove_file(entry.path()).await?;
            }
        }
        Ok(())
    }

    /// Removes the directory and every file in it (an export cancelled or expired).
    pub async fn remove(&self) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(&self.path).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Starts the `n`th file of `list` for `resource_type`.
    pub async fn start(&self, resource_type: &str, list: List, n: usize) -> std::io::Result<PartFile> {
        let name = file_name(resource_type, list, n);
        let finished = self.path.join(&name);
        let unfinished = self.path.join(format!("{name}{UNFINISHED}"));
        let file = File::create(&unfinished).await?;
        Ok(PartFile { file: BufWriter::with_capacity(BUFFER, file), name, unfinished, finished, count: 0, bytes: 0 })
    }
}

/// The name of the `n`th file (from 1) of a list: `Patient-1.ndjson`,
/// `Patient-deleted-1.ndjson`, `OperationOutcome-errors-1.ndjson`.
pub fn file_name(resource_type: &str, list: List, n: usize) -> String {
    match list {
        List::Output => format!("{resource_type}-{n}.ndjson"),
        List::Deleted => format!("{resource_type}-deleted-{n}.ndjson"),
        List::Error => format!("OperationOutcome-errors-{n}.ndjson"),
    }
}

/// A file being written, one resource a line.
pub struct PartFile {
    file: BufWriter<File>,
    name: String,
    unfinished: PathBuf,
    finished: PathBuf,
    count: u64,
    bytes: u64,
}

impl PartFile {
    /// Appends one resource (compact JSON without line breaks, as stored).
    pub async fn write(&mut self, resource: &[u8]) -> std::io::Result<()> {
        self.file.write_all(resource).await?;
        self.file.write_all(b"\n").await?;
        self.count += 1;
        self.bytes += resource.len() as u64 + 1;
        Ok(())
    }

    /// How many resources it holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes it out, on disk, under its final name: its name and count.
    pub async fn finish(mut self) -> std::io::Result<(String, u64)> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        tokio::fs::rename(&self.unfinished, &self.finished).await?;
        Ok((self.name, self.count))
    }

    /// Drops it unfinished (a job that was cancelled or taken over).
    pub async fn abandon(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.unfinished).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_export_file_names_name_a_file() {
        let dir = JobDir::new(Path::new("/exports"), 7);
        assert_eq!(dir.file("Patient-1.ndjson"), Some(PathBuf::from("/exports/job-7/Patient-1.ndjson")));
        for name in ["../job-8/Patient-1.ndjson", "Patient-1.ndjson.part", ".ndjson", "", "a/b.ndjson", "x%2F.ndjson"] {
            assert_eq!(dir.file(name), None, "{name}");
        }
    }

    #[tokio::test]
    async fn a_file_has_its_final_name_only_when_finished() {
        let root = tempfile::tempdir().unwrap();
        let dir = JobDir::new(root.path(), 1);
        dir.prepare().await.unwrap();
        let mut part = dir.start("Patient", List::Output, 1).await.unwrap();
        part.write(br#"{"resourceType":"Patient","id":"a"}"#).await.unwrap();
        assert!(!dir.file("Patient-1.ndjson").unwrap().exists());
        assert_eq!(part.finish().await.unwrap(), ("Patient-1.ndjson".to_string(), 1));
        let text = std::fs::read_to_string(dir.file("Patient-1.ndjson").unwrap()).unwrap();
        assert_eq!(text, "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n");
        let left = dir.start("Observation", List::Output, 1).await.unwrap();
        drop(left);
        dir.prepare().await.unwrap();
        let names: Vec<String> = std::fs::read_dir(root.path().join("job-1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["Patient-1.ndjson".to_string()]);
        dir.remove().await.unwrap();
        assert!(!root.path().join("job-1").exists());
    }
}
