//! Writing report files: completely or not at all (a temporary file in the
//! same directory, renamed over the target), mode 0600, never through a
//! symlink planted at the temporary name. A target that is a device, FIFO
//! or socket (`/dev/null`, `/dev/stdout`, a named pipe) is written in
//! place: renaming over it would replace the device with a file.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// An output file reserved before tracing starts.
pub struct Output {
    target: PathBuf,
    /// The temporary file, or None when writing in place.
    tmp: Option<PathBuf>,
    file: Option<File>,
}

impl Output {
    /// Check that `target` can be written, reserving a temporary file next
    /// to it. Fails early (before any tracing) with one clear line.
    pub fn reserve(target: &Path) -> Result<Self> {
        let shown = target.display();
        if target.is_dir() {
            bail!("cannot write report to {shown}: it is a directory");
        }
        if let Ok(m) = std::fs::metadata(target)
            && !m.is_file()
        {
            let file = OpenOptions::new()
                .write(true)
                .open(target)
                .with_context(|| format!("cannot write report to {shown}"))?;
            return Ok(Self {
                target: target.to_path_buf(),
                tmp: None,
                file: Some(file),
            });
        }
        if target.file_name().is_none() {
            bail!("cannot write report to {shown}: not a file name");
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!(
                "cannot write report to {shown}: directory {} does not exist",
                dir.display()
            );
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.memtrace-{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("cannot write report to {shown}"))?;
        Ok(Self {
            target: target.to_path_buf(),
            tmp: Some(tmp),
            file: Some(file),
        })
    }

    /// Write `text` and move it into place.
    pub fn commit(mut self, text: &str) -> Result<()> {
        let mut f = self.file.take().context("output already written")?;
        let Some(tmp) = &self.tmp else {
            return f
                .write_all(text.as_bytes())
                .with_context(|| format!("writing {}", self.target.display()));
        };
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(tmp, &self.target)
            .with_context(|| format!("moving report into place at {}", self.target.display()))?;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.file.is_some()
            && let Some(tmp) = &self.tmp
        {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("memtrace-out-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_atomically_with_mode_0600() {
        let d = tmpdir("ok");
        let target = d.join("r.json");
        let o = Output::reserve(&target).unwrap();
        assert!(!target.exists());
        o.commit("{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}\n");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn dropped_reservation_leaves_nothing() {
        let d = tmpdir("drop");
        drop(Output::reserve(&d.join("r.txt")).unwrap());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }

    #[test]
    fn devices_are_written_in_place() {
        let o = Output::reserve(Path::new("/dev/null")).unwrap();
        o.commit("report\n").unwrap();
        let m = std::fs::metadata("/dev/null").unwrap();
        assert!(!m.is_file(), "/dev/null was replaced by a file");
    }

    #[test]
    fn rejects_directory_and_missing_dir() {
        let d = tmpdir("bad");
        let e = Output::reserve(&d).err().unwrap().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = Output::reserve(&d.join("nope/r.txt"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
