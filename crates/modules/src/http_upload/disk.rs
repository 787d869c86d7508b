//! The upload directory on disk (blocking I/O; call from `spawn_blocking`): per-user usage for
//! the quota, removal of a user's files, the `max_days` sweep, and the `upload.secret` file.
//!
//! Layout: `docroot/<user dir>/<random>/<file name>`, written by the HTTP handler through a
//! temporary name in the same directory (a leading dot, which no served name has) and a link
//! to the final name. Nothing here follows symbolic links: a link planted in the docroot is
//! neither counted, nor followed, nor served.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

/// Bytes stored under one user's directory (finished files and uploads in progress).
pub fn usage(user_dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let slots = match fs::read_dir(user_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for slot in slots {
        let slot = slot?;
        if !slot.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(slot.path())? {
            let meta = file?.metadata()?;
            if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Removes one user's directory and everything in it; absent is fine.
pub fn remove_user(user_dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(user_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes files last modified before `cutoff` and the slot and user directories left empty;
/// returns how many files were removed.
pub fn sweep(docroot: &Path, cutoff: SystemTime) -> io::Result<u64> {
    let mut removed = 0u64;
    let users = match fs::read_dir(docroot) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for user in users {
        let user = user?;
        if !user.file_type()?.is_dir() {
            continue;
        }
        for slot in fs::read_dir(user.path())? {
            let slot = slot?;
            if !slot.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(slot.path())? {
                let file = file?;
                let meta = file.metadata()?;
                if meta.is_file() && meta.modified()? < cutoff {
                    fs::remove_file(file.path())?;
                    removed += 1;
                }
            }
            // Fails (harmlessly) while the slot still holds files.
            let _ = fs::remove_dir(slot.path());
        }
        let _ = fs::remove_dir(user.path());
    }
    Ok(removed)
}

/// Reads the secret in `path`, creating it (32 random bytes as hex, mode 0600) if absent, so
/// URLs handed out before a restart stay valid after it.
pub fn load_or_create_secret(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read_to_string(path) {
        Ok(text) => return valid_secret(path, &text),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let secret = super::slot::hex(&rand::random::<[u8; 32]>());
    let mut options = fs::OpenOptions::new();
    // create_new: the module and the HTTP handler may both get here first; the loser reads
    // what the winner wrote.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{secret}\n").as_bytes())?;
            file.sync_all()?;
            Ok(secret.into_bytes())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // The other writer may not have written yet: give it a moment.
            for _ in 0..50 {
                let text = fs::read_to_string(path)?;
                if !text.trim().is_empty() {
                    return valid_secret(path, &text);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            valid_secret(path, &fs::read_to_string(path)?)
        }
        Err(e) => Err(e),
    }
}

fn valid_secret(path: &Path, text: &str) -> io::Result<Vec<u8>> {
    let text = text.trim();
    if text.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: secret shorter than 16 characters", path.display()),
        ));
    }
    Ok(text.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write(path: &Path, bytes: usize) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn usage_sums_a_users_files() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("u1");
        assert_eq!(usage(&user).unwrap(), 0, "no directory yet");
        write(&user.join("r1/a.txt"), 10);
        write(&user.join("r2/b.txt"), 32);
        write(&dir.path().join("u2/r3/c.txt"), 1000);
        assert_eq!(usage(&user).unwrap(), 42);
        remove_user(&user).unwrap();
        assert_eq!(usage(&user).unwrap(), 0);
        remove_user(&user).unwrap();
        assert_eq!(usage(&dir.path().join("u2")).unwrap(), 1000);
    }

    #[test]
    fn sweep_removes_old_files_and_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("u1/r1/old.txt"), 3);
        write(&dir.path().join("u1/r2/new.txt"), 3);
        let now = SystemTime::now();
        // Everything is older than a cutoff in the future, nothing older than one in the past.
        assert_eq!(
            sweep(dir.path(), now - Duration::from_secs(3600)).unwrap(),
            0
        );
        let old = fs::File::options()
            .write(true)
            .open(dir.path().join("u1/r1/old.txt"))
            .unwrap();
        old.set_modified(now - Duration::from_secs(7200)).unwrap();
        assert_eq!(
            sweep(dir.path(), now - Duration::from_secs(3600)).unwrap(),
            1
        );
        assert!(!dir.path().join("u1/r1").exists(), "empty slot removed");
        assert!(dir.path().join("u1/r2/new.txt").exists());
        assert_eq!(sweep(dir.path(), now + Duration::from_secs(60)).unwrap(), 1);
        assert!(!dir.path().join("u1").exists());
        assert_eq!(sweep(&dir.path().join("absent"), now).unwrap(), 0);
    }

    #[test]
    fn secret_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/upload.secret");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        fs::write(&path, "short").unwrap();
        assert!(load_or_create_secret(&path).is_err());
    }
}
