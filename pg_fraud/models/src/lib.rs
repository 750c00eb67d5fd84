//! Models for pg_fraud (work in progress).
