//! The extension's one error type, mapped to SQLSTATEs callers can branch on.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

/// Everything that can go wrong in pg_fraud, with enough context to name the problem.
#[derive(Debug, thiserror::Error)]
pub enum FraudError {
    /// An argument is out of its domain (negative window, NaN amount...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A table is not watched (or several are and none was named).
    #[error("{0}")]
    NotWatched(String),
    /// A mapped column does not exist.
    #[error("column \"{column}\" of {table} does not exist (mapped as {role})")]
    MissingColumn {
        /// The watched table.
        table: String,
        /// The column name given in the mapping.
        column: String,
        /// Which mapping it was (entity, amount...).
        role: &'static str,
    },
    /// A mapped column has a type pg_fraud cannot read for its role.
    #[error("column \"{column}\" of {table} has type {found}, but the {role} column must be {expected}")]
    WrongType {
        /// The watched table.
        table: String,
        /// The column.
        column: String,
        /// Which mapping it was.
        role: &'static str,
        /// The column's actual type.
        found: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A rule failed to compile.
    #[error("rule \"{name}\": {message}")]
    Rule {
        /// Rule name.
        name: String,
        /// The compiler's message, with its caret display.
        message: String,
        /// SQLSTATE class: syntax, unknown name, or type mismatch.
        code: PgSqlErrorCode,
    },
    /// A stored profile state could not be decoded.
    #[error("profile of {kind} \"{key}\": {source}")]
    CorruptState {
        /// Key kind.
        kind: &'static str,
        /// Key.
        key: String,
        /// Why.
        source: fraud_core::state::StateError,
    },
    /// A model could not be loaded or used.
    #[error("model \"{name}\" version {version}: {message}")]
    Model {
        /// Model name.
        name: String,
        /// Version.
        version: i32,
        /// Why.
        message: String,
    },
    /// The extension's own configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// An SPI call failed.
    #[error("internal query failed: {0}")]
    Spi(#[from] pgrx::spi::SpiError),
}

/// Shorthand.
pub type Result<T, E = FraudError> = std::result::Result<T, E>;

impl FraudError {
    /// The SQLSTATE for this error.
    pub fn code(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            FraudError::InvalidArgument(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            FraudError::NotWatched(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            FraudError::MissingColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            FraudError::WrongType { .. } => ERRCODE_DATATYPE_MISMATCH,
            FraudError::Rule { code, .. } => *code,
            FraudError::CorruptState { .. } => ERRCODE_DATA_CORRUPTED,
            FraudError::Model { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            FraudError::Config(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            FraudError::Spi(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    /// A report carrying the SQLSTATE, message and a hint where one helps.
    pub fn report(&self) -> ErrorReport {
        let mut r = ErrorReport::new(self.code(), format!("pg_fraud: {self}"), "pg_fraud");
        let hint = match self {
            FraudError::NotWatched(_) => {
                Some("Attach scoring with fraud.watch(table, entity => ..., amount => ..., ts => ...).")
            }
            FraudError::MissingColumn { .. } | FraudError::WrongType { .. } => {
                Some("Fix the mapping with fraud.watch(...) again, or fraud.unwatch(table).")
            }
            FraudError::CorruptState { .. } => {
                Some("Rebuild profiles from the table with fraud.rebuild_profiles(table).")
            }
            _ => None,
        };
        if let Some(h) = hint {
            r = r.set_hint(h);
        }
        r
    }
}

impl From<FraudError> for ErrorReport {
    fn from(e: FraudError) -> Self {
        e.report()
    }
}

/// Raises `e` as a Postgres ERROR (never returns).
pub fn raise(e: FraudError) -> ! {
    e.report().report(pgrx::PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
