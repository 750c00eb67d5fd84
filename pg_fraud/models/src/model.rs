//! The deployable model and its binary format.
//!
//! Layout of a serialized model (all integers little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 0..8   | magic `b"PGFRAUD\x01"` |
//! | 8..10  | format version (`u16`, currently 1) |
//! | 10..14 | payload length (`u32`) |
//! | 14..18 | CRC-32 (IEEE) of the payload (`u32`) |
//! | 18..   | payload: the [`Model`] in postcard encoding |
//!
//! postcard rather than JSON because a 100-tree forest is tens of thousands of nodes: postcard
//! stores each f64 in 8 bytes and small integers as varints, so blobs stay compact for a bytea
//! column and decode in a few milliseconds. The checksum turns any truncation or flipped byte
//! into [`ModelError::Corrupt`]; the structural validation after decoding then guarantees that
//! even a blob that checksums correctly cannot make scoring index out of bounds or loop.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::classifier::Classifier;
use crate::error::{ModelError, Result};
use crate::iforest::IsolationForest;
use crate::Explanation;

/// First 8 bytes of every serialized model.
pub const MAGIC: [u8; 8] = *b"PGFRAUD\x01";
/// Format version written by [`Model::to_bytes`] and the only one [`Model::from_bytes`] reads.
pub const FORMAT_VERSION: u16 = 1;

const HEADER_LEN: usize = 18;

/// A trained model of either kind, as stored in `fraud.models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Model {
    /// Unsupervised anomaly scores.
    IsolationForest(IsolationForest),
    /// Supervised fraud probability.
    Classifier(Classifier),
}

impl From<IsolationForest> for Model {
    fn from(m: IsolationForest) -> Self {
        Model::IsolationForest(m)
    }
}

impl From<Classifier> for Model {
    fn from(m: Classifier) -> Self {
        Model::Classifier(m)
    }
}

impl Model {
    /// `"isolation_forest"` or `"classifier"`, as in `fraud.models.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::IsolationForest(_) => "isolation_forest",
            Model::Classifier(_) => "classifier",
        }
    }

    /// Feature names, in the order rows must follow.
    pub fn feature_names(&self) -> &[String] {
        match self {
            Model::IsolationForest(m) => m.feature_names(),
            Model::Classifier(m) => m.feature_names(),
        }
    }

    /// Score in [0, 1] for one row: the anomaly score or the fraud probability.
    /// Allocation-free; errors only if the row length differs from the feature count.
    pub fn score(&self, row: &[f64]) -> Result<f64> {
        match self {
            Model::IsolationForest(m) => m.score(row),
            Model::Classifier(m) => m.predict_proba(row),
        }
    }

    /// [`score`](Self::score) for every row of `x`.
    pub fn score_batch(&self, x: ArrayView2<'_, f64>) -> Result<Vec<f64>> {
        match self {
            Model::IsolationForest(m) => m.score_batch(x),
            Model::Classifier(m) => m.predict_proba_batch(x),
        }
    }

    /// The score and each feature's share in it.
    pub fn explain(&self, row: &[f64]) -> Result<Explanation> {
        match self {
            Model::IsolationForest(m) => m.explain(row),
            Model::Classifier(m) => m.explain(row),
        }
    }

    /// A JSON summary for `fraud.models.params`: kind, features, parameters, sizes.
    pub fn summary(&self) -> serde_json::Value {
        match self {
            Model::IsolationForest(m) => serde_json::json!({
                "kind": self.kind(),
                "features": m.feature_names(),
                "params": m.params(),
                "sample_size": m.sample_size(),
                "max_depth": m.max_depth(),
                "training_rows": m.training_rows(),
                "nodes": m.node_count(),
            }),
            Model::Classifier(m) => serde_json::json!({
                "kind": self.kind(),
                "features": m.feature_names(),
                "params": m.params(),
                "base_rate": m.base_rate(),
                "training_rows": m.training_rows(),
                "training_positives": m.training_positives(),
                "nodes": m.node_count(),
            }),
        }
    }

    /// Serializes to the versioned, checksummed format described in the module docs.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let payload = postcard::to_allocvec(self)
            .map_err(|e| ModelError::corrupt(format!("cannot encode model: {e}")))?;
        let length = u32::try_from(payload.len())
            .map_err(|_| ModelError::corrupt("model larger than 4 GiB"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Reads a model written by [`to_bytes`](Self::to_bytes). Any truncation, trailing
    /// garbage, flipped byte or foreign blob is an error ([`ModelError::Corrupt`], or
    /// [`ModelError::UnsupportedVersion`] for another format version), never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        if bytes.len() < HEADER_LEN {
            return Err(ModelError::corrupt(format!(
                "blob is {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if header[0..8] != MAGIC {
            return Err(ModelError::corrupt(
                "not a pg_fraud model (bad magic bytes)",
            ));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != FORMAT_VERSION {
            return Err(ModelError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let length = u32::from_le_bytes([header[10], header[11], header[12], header[13]]);
        if payload.len() as u64 != u64::from(length) {
            return Err(ModelError::corrupt(format!(
                "header announces {length} payload bytes but {} follow (truncated or padded)",
                payload.len()
            )));
        }
        let expected = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
        let actual = crc32fast::hash(payload);
        if actual != expected {
            return Err(ModelError::corrupt(format!(
                "checksum mismatch (stored {expected:08x}, computed {actual:08x})"
            )));
        }
        let (model, rest): (Model, &[u8]) = postcard::take_from_bytes(payload)
            .map_err(|e| ModelError::corrupt(format!("payload does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(ModelError::corrupt(format!(
                "{} unexpected bytes after the model",
                rest.len()
            )));
        }
        match &model {
            Model::IsolationForest(m) => m.validate()?,
            Model::Classifier(m) => m.validate()?,
        }
        Ok(model)
    }
}
