//! Typed errors at the library boundary.
//!
//! Inside the engine, failures travel as `anyhow::Error` with context added on the way up (file, slice,
//! option), so messages read "file: problem". Where a failure of a known kind starts (a reader refusing
//! a file, a device that cannot be used, an organ missing from a slice, a device allocation failing),
//! it is raised as an [`Error`] of that kind. The facade returns [`Error`]: its kind (and path) is the
//! first typed error found in the chain, its message the whole chain as the CLI prints it, so callers
//! branch on [`ErrorKind`] instead of matching message text.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, for callers that decide what to do next (retry smaller, skip the case, stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// A file or an option value that cannot be used as given (corrupt, truncated, out of range).
    InvalidInput,
    /// Well-formed input this engine does not handle (a data type, dimensionality, transfer syntax).
    Unsupported,
    /// The organ asked for is not on the slice or in the volume (nothing to explain).
    OrganAbsent,
    /// The requested compute device cannot be used (no driver, no GPU, built without kernels).
    DeviceUnavailable,
    /// The device ran out of memory; a smaller batch may succeed.
    OutOfMemory,
    /// The region of interest misses the organ the U-Net predicts: explaining it would explain the
    /// wrong place.
    RoiMiss,
    /// The caller cancelled the run (its cancel token was set; Ctrl-C in Python).
    Cancelled,
    /// Anything else: a failed write, an internal check.
    Other,
}

impl ErrorKind {
    /// The kind's name as it appears in JSON records (`invalid-input`, `organ-absent`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::OrganAbsent => "organ-absent",
            ErrorKind::DeviceUnavailable => "device-unavailable",
            ErrorKind::OutOfMemory => "out-of-memory",
            ErrorKind::RoiMiss => "roi-miss",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Other => "other",
        }
    }
}

/// An error with a kind, the file it concerns (when there is one) and a message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    path: Option<PathBuf>,
    message: String,
}

/// `Result` of the library's public calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message` (which should already name the file when there is one).
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self { kind, path: None, message: message.to_string() }
    }

    /// The same error, about `path`.
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Wraps a reader's failure on `path` as invalid input, unless the reader already said what kind
    /// it was (e.g. unsupported): readers only know that the bytes were wrong, not which bytes mattered.
    pub fn input(path: &Path, e: anyhow::Error) -> anyhow::Error {
        if find(&e).is_some() {
            return e;
        }
        anyhow::Error::new(Error::new(ErrorKind::InvalidInput, format!("{e:#}")).with_path(path))
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file or folder concerned, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// The first typed error in `e`'s chain.
fn find(e: &anyhow::Error) -> Option<&Error> {
    e.chain().find_map(|c| c.downcast_ref::<Error>())
}

/// The kind of an engine error: that of the first typed error in its chain, else `Other`.
pub fn kind_of(e: &anyhow::Error) -> ErrorKind {
    find(e).map_or(ErrorKind::Other, Error::kind)
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        let typed = find(&e);
        Error {
            kind: typed.map_or(ErrorKind::Other, Error::kind),
            path: typed.and_then(|t| t.path.clone()),
            // The whole chain, outermost context first, as `{:#}` prints it.
            message: format!("{e:#}"),
        }
    }
}

/// Returns early with an [`Error`] of the given kind, formatted like `anyhow::bail!`.
#[macro_export]
macro_rules! fail {
    ($kind:ident, $($arg:tt)+) => {
        return Err(anyhow::Error::new($crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)+))).into())
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kind_and_path_survive_context_and_the_message_keeps_it() {
        let inner: anyhow::Result<()> = Err(anyhow::anyhow!("bad magic"));
        let e = inner.map_err(|e| Error::input(Path::new("a.nii"), e)).context("case 3").unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::InvalidInput);
        let typed = Error::from(e);
        assert_eq!(typed.kind(), ErrorKind::InvalidInput);
        assert_eq!(typed.path(), Some(Path::new("a.nii")));
        assert_eq!(typed.to_string(), "case 3: bad magic");
        let plain = Error::from(anyhow::anyhow!("disk full"));
        assert_eq!((plain.kind(), plain.path()), (ErrorKind::Other, None));
    }

    #[test]
    fn an_inner_kind_is_not_overwritten_by_the_reader_wrapper() {
        let f = || -> anyhow::Result<()> { fail!(Unsupported, "complex64 voxels") };
        let e = f().map_err(|e| Error::input(Path::new("b.nii"), e)).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Unsupported);
    }
}
