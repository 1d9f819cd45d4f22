//! Reading input files safely: every input (weights, images, configs, boxes, annotations)
//! must be a regular file, since a FIFO or a device (`/dev/zero`) would block forever or grow
//! without end; text inputs are also read only up to a size their kind can reasonably have.

use crate::error::{Error, Result};
use std::path::Path;

/// An error unless `path` is a regular file (after following links); its metadata otherwise.
pub fn check_regular(path: &Path) -> Result<std::fs::Metadata> {
    if path.as_os_str().is_empty() {
        return Err(Error::Input(
            "an empty path where a file was expected".into(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Error::Input(format!(
            "{}: is {what}; expected a file",
            path.display()
        )));
    }
    Ok(meta)
}

/// The whole file as UTF-8 text: a regular file of at most `max_bytes` (`what` names the
/// kind of file in the error).
pub fn read_text(path: &Path, what: &str, max_bytes: u64) -> Result<String> {
    let meta = check_regular(path)?;
    if meta.len() > max_bytes {
        return Err(Error::Input(format!(
            "{}: {} bytes is more than a {what} holds (at most {max_bytes})",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_size() {
        let dir = std::env::temp_dir().join(format!("handcov_textfile_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.json");
        std::fs::write(&f, "{\"x\": 1}").unwrap();
        assert_eq!(read_text(&f, "config", 100).unwrap(), "{\"x\": 1}");
        let e = read_text(&f, "config", 3).unwrap_err().to_string();
        assert!(e.contains("8 bytes is more than a config holds"), "{e}");
        let e = read_text(&dir, "config", 100).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = read_text(Path::new("/dev/zero"), "config", 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
