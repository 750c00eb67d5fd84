//! Pure scoring logic for pg_fraud. Nothing here knows about PostgreSQL: the extension
//! feeds rows in and writes states out, and everything in between is unit-tested here.

pub mod decay;
pub mod defaults;
pub mod features;
pub mod geo;
pub mod replay;
pub mod rules;
pub mod score;
pub mod sketch;
pub mod state;
pub mod stats;
pub mod timefeat;
