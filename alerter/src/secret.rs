//! Values that must never reach a log line: webhook URLs (the URL *is* the credential for
//! Slack), SMTP passwords, HMAC secrets and database connection strings.
//!
//! [`Secret`] is deliberately not `Serialize` and prints `***` through both `Debug` and
//! `Display`, so `tracing::info!(?config)` or an `{:?}` in an error message cannot leak it.
//! Code that really needs the value calls [`Secret::expose`], which is easy to grep for.

use std::fmt;

/// A value whose `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The wrapped value. Every call site is a place where the secret leaves the wrapper, so
    /// keep them few and never pass the result to a logging macro.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new(String::from("hunter2"));
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");

        #[derive(Debug)]
        #[allow(dead_code)] // only read through Debug
        struct Holder {
            password: Secret<String>,
        }
        let h = Holder { password: Secret::new("hunter2".into()) };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert!(!format!("{h:#?}").contains("hunter2"));
    }
}
