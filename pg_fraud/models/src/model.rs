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
        let payload =
            postcard::to_allocvec(self).map_err(|e| ModelError::corrupt(format!("cannot encode model: {e}")))?;
        let length = u32::try_from(payload.len()).map_err(|_| ModelError::corrupt("model larger than 4 GiB"))?;
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
            return Err(ModelError::corrupt("not a pg_fraud model (bad magic bytes)"));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != FORMAT_VERSION {
            return Err(ModelError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
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
            return Err(ModelError::corrupt(format!("{} unexpected bytes after the model", rest.len())));
        }
        match &model {
            Model::IsolationForest(m) => m.validate()?,
            Model::Classifier(m) => m.validate()?,
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::ClassifierParams;
    use crate::iforest::IsolationForestParams;
    use crate::testutil::{blob, labelled, names};

    fn small_forest() -> Model {
        let x = blob(200, 3, 1);
        let params = IsolationForestParams { n_trees: 4, sample_size: 16, ..IsolationForestParams::default() };
        IsolationForest::fit(x.view(), &names(3), &params).unwrap().into()
    }

    fn small_classifier() -> Model {
        let (x, y) = labelled(300, 3, 0.1, 2);
        let params = ClassifierParams { n_trees: 3, max_depth: 4, ..ClassifierParams::default() };
        Classifier::fit(x.view(), &y, &names(3), &params).unwrap().into()
    }

    #[test]
    fn round_trip_preserves_scores_exactly() {
        let x = blob(500, 3, 9);
        for model in [small_forest(), small_classifier()] {
            let bytes = model.to_bytes().unwrap();
            assert_eq!(bytes[..8], MAGIC);
            let back = Model::from_bytes(&bytes).unwrap();
            assert_eq!(back, model);
            assert_eq!(back.kind(), model.kind());
            for row in x.rows() {
                let row = row.to_vec();
                assert_eq!(back.score(&row).unwrap().to_bits(), model.score(&row).unwrap().to_bits());
            }
            assert_eq!(back.score_batch(x.view()).unwrap(), model.score_batch(x.view()).unwrap());
            assert_eq!(back.explain(&[0.0; 3]), model.explain(&[0.0; 3]));
            assert_eq!(back.to_bytes().unwrap(), bytes);
            assert_eq!(back.score(&[1.0]).unwrap_err(), ModelError::RowLength { expected: 3, got: 1 });
            assert_eq!(back.summary()["kind"], model.kind());
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for model in [small_forest(), small_classifier()] {
            let bytes = model.to_bytes().unwrap();
            for len in 0..bytes.len() {
                let err = Model::from_bytes(&bytes[..len]).unwrap_err();
                assert!(matches!(err, ModelError::Corrupt { .. }), "len {len}: {err}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Model::from_bytes(&longer).is_err());
        }
    }

    #[test]
    fn every_single_byte_corruption_is_an_error() {
        for model in [small_forest(), small_classifier()] {
            let bytes = model.to_bytes().unwrap();
            let mut copy = bytes.clone();
            for i in 0..bytes.len() {
                // Every value in the header; three patterns (low bit, high bit, all bits) in
                // the payload, where the CRC catches any error confined to one byte.
                let masks: Vec<u8> = if i < HEADER_LEN { (1..=255).collect() } else { vec![0x01, 0x80, 0xff] };
                for mask in masks {
                    copy[i] ^= mask;
                    let result = Model::from_bytes(&copy);
                    assert!(
                        matches!(result, Err(ModelError::Corrupt { .. } | ModelError::UnsupportedVersion { .. })),
                        "byte {i} ^ {mask:#x}: {result:?}"
                    );
                    copy[i] ^= mask;
                }
            }
            assert_eq!(copy, bytes);
        }
    }

    #[test]
    fn a_checksummed_but_inconsistent_model_is_refused() {
        let Model::IsolationForest(mut forest) = small_forest() else { unreachable!() };
        let split = forest.forest.nodes.iter().position(|n| !n.is_leaf()).unwrap();
        forest.forest.nodes[split].right = u32::MAX - 1;
        let bytes = Model::from(forest).to_bytes().unwrap();
        let err = Model::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("child indices"), "{err}");

        let Model::Classifier(mut clf) = small_classifier() else { unreachable!() };
        clf.medians.pop();
        let bytes = Model::from(clf).to_bytes().unwrap();
        assert!(matches!(Model::from_bytes(&bytes), Err(ModelError::Corrupt { .. })));
    }

    #[test]
    fn foreign_and_future_blobs() {
        let err = Model::from_bytes(b"{\"json\": true, \"not\": \"a model\"}").unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        let mut bytes = small_forest().to_bytes().unwrap();
        bytes[8] = 2;
        assert_eq!(Model::from_bytes(&bytes).unwrap_err(), ModelError::UnsupportedVersion { found: 2, supported: 1 });
    }
}
