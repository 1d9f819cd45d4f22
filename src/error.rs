//! The library's one error type. Every failure that user input can cause ends up here, with a
//! message that says what went wrong, where, and (when it helps) what to do about it. Binaries
//! print it as `error: <message>` and exit with code 2.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum Error {
    /// A file could not be opened, read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A weights file is malformed, or a tensor in it is missing, extra, mis-shaped or mistyped.
    Weights(String),
    /// A model configuration is malformed or inconsistent.
    Config(String),
    /// An input (tensor, image, boxes, flags) is malformed or out of range.
    Input(String),
    /// The CUDA backend is unavailable or failed.
    Cuda(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

impl Error {
    /// A safetensors problem in a file that holds inputs (an input tensor, a batch, a
    /// covariance file), not weights: reported as an input error.
    pub fn as_input(self) -> Self {
        match self {
            Error::Weights(m) => Error::Input(m),
            other => other,
        }
    }

    /// The message as the one line the tools print: line breaks (from a file name, or a
    /// library's message) are escaped, so that `error: …` stays a single line.
    pub fn one_line(&self) -> String {
        self.to_string()
            .trim_end()
            .replace('\r', "\\r")
            .replace('\n', "\\n")
    }

    /// The same error with `hint` appended to its message (what the user can do about it).
    pub fn with_hint(self, hint: &str) -> Self {
        match self {
            Error::Weights(m) => Error::Weights(format!("{m}; {hint}")),
            Error::Config(m) => Error::Config(format!("{m}; {hint}")),
            Error::Input(m) => Error::Input(format!("{m}; {hint}")),
            Error::Cuda(m) => Error::Cuda(format!("{m}; {hint}")),
            io @ Error::Io { .. } => io,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::Weights(m) => write!(f, "weights: {m}"),
            Error::Config(m) => write!(f, "config: {m}"),
            Error::Input(m) => write!(f, "input: {m}"),
            Error::Cuda(m) => write!(f, "cuda: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Another library's message on one line, its whitespace runs (line breaks included) made
/// single spaces: decoder errors can end with a line break.
pub fn flatten(e: &dyn fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Shorthand for `Err(Error::Input(format!(...)))`.
#[macro_export]
macro_rules! input_err {
    ($($t:tt)*) => { Err($crate::error::Error::Input(format!($($t)*))) };
}
