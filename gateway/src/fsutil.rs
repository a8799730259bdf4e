//! Small file helpers shared by everything that writes state or config.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to a new private (0600) file at `path` and fsyncs it. A
/// stale file of that name is removed first, and the new one is created
/// exclusively, so a symlink planted there is never followed.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    remove_if_present(path)?;
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub(crate) fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Replaces `path` atomically with a private (0600) file holding `bytes`:
/// a crash leaves the old file or the new one, never a torn one.
pub(crate) fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = Path::new(&temporary);
    write_new_private(temporary, bytes)?;
    fs::rename(temporary, path)?;
    fs::File::open(parent_dir(path))?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name), whose fsync
/// makes a rename in it durable.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}
