//! Models in the backend: each active model's signal on a row (decoded once per backend and
//! version), training on point-in-time features replayed from history, and the registry
//! (deploy, rollback, retrain).
//!
//! The model math lives in the pure `fraud_models` crate and the replay in
//! `fraud_core::replay`; this module moves rows and blobs between them and Postgres.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use ndarray::ArrayView2;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, Spi};
use pgrx::JsonB;
use serde_json::{json, Value as Json};

use fraud_core::features::{self, FType, FeatureVector, FEATURES};
use fraud_core::replay::Replay;
use fraud_core::score::{self, ModelSignal};
use fraud_models::metrics;
use fraud_models::{
    time_split, train_classifier, ClassifierParams, IsolationForest, IsolationForestParams, Model, Reservoir,
    TrainConfig,
};

use crate::catalog::{self, Config, Watch};
use crate::error::{FraudError, Result};
use crate::gucs::{self, OnError};
use crate::regclass::RegClass;
use crate::{admin, alerts, scoring};

type SqlResult<T> = std::result::Result<T, pgrx::pg_sys::panic::ErrorReport>;

/// Decoded models kept per backend; a deploy is a new (name, version), so nothing here ever
/// needs invalidating, and the bound only protects against many retrains in one session.
const CACHE_MAX: usize = 32;

/// A model ready to score: the decoded forest and where each of its inputs sits in the
/// feature vector.
#[derive(Debug)]
pub struct Loaded {
    model: Model,
    ids: Vec<usize>,
    row: RefCell<Vec<f64>>,
}

type CacheEntry = Rc<std::result::Result<Loaded, String>>;

thread_local! {
    // Backends are single-threaded; the cache is only touched from the scoring path.
    static CACHE: RefCell<HashMap<(String, i32), CacheEntry>> = RefCell::new(HashMap::new());
}

/// An active version, as listed in the configuration (the blob is loaded on first use).
#[derive(Debug)]
pub struct ActiveModel {
    /// Model name.
    pub name: String,
    /// Active version.
    pub version: i32,
    /// `isolation_forest` or `classifier`.
    pub kind: String,
    /// Signal strength at full output.
    pub weight: f64,
    /// Output at which the signal starts.
    pub from: f64,
    /// Output at which the signal reaches `weight`.
    pub to: f64,
    loaded: OnceCell<CacheEntry>,
}

impl ActiveModel {
    /// A listed version; `loaded` is filled on first use.
    pub fn new(name: String, version: i32, kind: String, weight: f64, from: f64, to: f64) -> Self {
        ActiveModel { name, version, kind, weight, from, to, loaded: OnceCell::new() }
    }

    fn loaded(&self, owner: Oid) -> CacheEntry {
        self.loaded
            .get_or_init(|| {
                let key = (self.name.clone(), self.version);
                if let Some(hit) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
                    return hit;
                }
                let entry = Rc::new(catalog::as_owner(owner, || load(&self.name, self.version)));
                if let Err(msg) = entry.as_ref() {
                    pgrx::warning!("pg_fraud: model \"{}\" version {} is skipped: {msg}", self.name, self.version);
                }
                CACHE.with(|c| {
                    let mut c = c.borrow_mut();
                    if c.len() >= CACHE_MAX {
                        c.clear();
                    }
                    c.insert(key, entry.clone());
                });
                entry
            })
            .clone()
    }

    /// The signal `weight × clamp((output − from) / (to − from), 0, 1)`.
    fn signal(&self, output: f64) -> f64 {
        (self.weight * ((output - self.from) / (self.to - self.from)).clamp(0.0, 1.0)).clamp(0.0, 1.0)
    }
}

/// Reads and decodes one version, mapping its feature names to vector positions.
fn load(name: &str, version: i32) -> std::result::Result<Loaded, String> {
    let blob = admin::first::<Vec<u8>>(
        "SELECT model FROM fraud.models WHERE name OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
        &[name.into(), version.into()],
    )
    .map_err(|e| format!("cannot read it: {e}"))?
    .ok_or("it no longer exists")?;
    decode(&blob)
}

fn decode(blob: &[u8]) -> std::result::Result<Loaded, String> {
    let model = Model::from_bytes(blob).map_err(|e| e.to_string())?;
    let ids = model
        .feature_names()
        .iter()
        .map(|n| {
            features::feature_index(n)
                .ok_or_else(|| format!("it uses feature \"{n}\", which this version of pg_fraud does not compute"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let width = ids.len();
    Ok(Loaded { model, ids, row: RefCell::new(Vec::with_capacity(width)) })
}

/// The signal of every active model of the row's table. A model that cannot be loaded is
/// skipped (noted in `fraud.scoring_errors`) unless `pg_fraud.on_error = closed`.
/// `explain` adds each model's feature attribution (a second walk of its trees).
pub fn signals(cfg: &Config, watch: &Watch, fv: &FeatureVector, explain: bool) -> Result<Vec<ModelSignal>> {
    let Some(models) = cfg.models_by_relid.get(&watch.relid) else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(models.len());
    for m in models.iter() {
        let entry = m.loaded(cfg.owner);
        let loaded = match entry.as_ref() {
            Ok(l) => l,
            Err(message) => {
                let e = FraudError::Model { name: m.name.clone(), version: m.version, message: message.clone() };
                if gucs::ON_ERROR.get() == OnError::Closed {
                    return Err(e);
                }
                alerts::note_error(&watch.name, &e.to_string());
                continue;
            }
        };
        let mut row = loaded.row.borrow_mut();
        fv.model_row(&loaded.ids, &mut row);
        let model_err = |e: fraud_models::ModelError| FraudError::Model {
            name: m.name.clone(),
            version: m.version,
            message: e.to_string(),
        };
        let raw = loaded.model.score(&row).map_err(model_err)?;
        let p = m.signal(raw);
        let top_features = if explain { top_features(loaded, &row).map_err(model_err)? } else { Vec::new() };
        out.push(ModelSignal { name: m.name.clone(), version: m.version, kind: m.kind.clone(), raw, p, top_features });
    }
    Ok(out)
}

/// Adds the feature attribution to signals computed without it (an alerting row's).
pub fn attribute(cfg: &Config, watch: &Watch, fv: &FeatureVector, signals: &mut [ModelSignal]) -> Result<()> {
    let Some(models) = cfg.models_by_relid.get(&watch.relid) else { return Ok(()) };
    for s in signals.iter_mut().filter(|s| s.top_features.is_empty()) {
        let Some(m) = models.iter().find(|m| m.name == s.name && m.version == s.version) else { continue };
        if let Ok(loaded) = m.loaded(cfg.owner).as_ref() {
            let mut row = loaded.row.borrow_mut();
            fv.model_row(&loaded.ids, &mut row);
            s.top_features = top_features(loaded, &row).map_err(|e| FraudError::Model {
                name: m.name.clone(),
                version: m.version,
                message: e.to_string(),
            })?;
        }
    }
    Ok(())
}

/// The five features with the largest share in the model's output for `row`.
fn top_features(loaded: &Loaded, row: &[f64]) -> fraud_models::Result<Vec<(String, f64)>> {
    let why = loaded.model.explain(row)?;
    let mut top: Vec<(String, f64)> =
        loaded.model.feature_names().iter().cloned().zip(why.attribution).filter(|(_, share)| *share > 0.0).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(5);
    Ok(top)
}

// ---------------------------------------------------------------------------------------
// Training data: history replayed in time order.

/// Which rows a training set keeps.
#[derive(Clone, Copy)]
enum Sampling {
    /// A uniform sample of every row (unsupervised).
    Uniform,
    /// Every fraud row, and a uniform sample of genuine rows; unlabelled rows count as
    /// genuine or are left out.
    Supervised { unlabelled_as_genuine: bool },
}

/// One training row: its point-in-time features, time and label.
struct Example {
    x: Vec<f64>,
    t_us: i64,
    label: Option<bool>,
    key: Option<String>,
}

struct Collected {
    examples: Vec<Example>,
    replayed: u64,
    in_window: u64,
}

/// What to replay and keep.
struct Window {
    since_us: Option<i64>,
    until_us: Option<i64>,
}

impl Window {
    fn contains(&self, t_us: i64) -> bool {
        self.since_us.is_none_or(|s| t_us >= s) && self.until_us.is_none_or(|u| t_us < u)
    }
}

/// The feature ids a model will use: the names given, or every number and flag.
fn feature_ids(names: Option<&[String]>) -> Result<Vec<usize>> {
    let Some(names) = names else {
        return Ok(features::default_model_features().iter().filter_map(|n| features::feature_index(n)).collect());
    };
    if names.is_empty() {
        return Err(FraudError::InvalidArgument("features must name at least one feature (or be NULL for all)".into()));
    }
    let mut ids = Vec::with_capacity(names.len());
    for n in names {
        let id = features::feature_index(n).ok_or_else(|| {
            FraudError::InvalidArgument(format!(
                "unknown feature \"{n}\" in features (SELECT name FROM fraud.features lists them)"
            ))
        })?;
        if FEATURES[id].ty == FType::Str {
            return Err(FraudError::InvalidArgument(format!("feature \"{n}\" is text; models take numbers and flags")));
        }
        if ids.contains(&id) {
            return Err(FraudError::InvalidArgument(format!("feature \"{n}\" is listed twice")));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Labels of a table's rows: row key → (is fraud, labelled at).
fn load_labels(relid: Oid) -> Result<HashMap<String, (bool, i64)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT row_key, is_fraud, (EXTRACT(epoch FROM labelled_at) OPERATOR(pg_catalog.*) 1e6)::pg_catalog.int8 \
               FROM fraud.labels WHERE source_table OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass",
            None,
            &[relid.into()],
        )?;
        let mut out = HashMap::new();
        for r in rows {
            if let (Some(k), Some(f), Some(at)) = (r.get::<String>(1)?, r.get::<bool>(2)?, r.get::<i64>(3)?) {
                out.insert(k, (f, at));
            }
        }
        Ok(out)
    })
}

/// Replays `watch`'s table in time order through the trigger's feature code, keeping the
/// rows of `window` chosen by `sampling` (at most `max_rows`; fraud rows are all kept).
fn collect(
    cfg: &Config,
    watch: &Watch,
    ids: &[usize],
    window: &Window,
    sampling: Sampling,
    max_rows: usize,
    seed: u64,
) -> Result<Collected> {
    let cols = watch.columns.as_ref().map_err(|e| FraudError::Config(e.clone()))?;
    let labels = if cols.key.is_some() { load_labels(watch.relid)? } else { HashMap::new() };
    let rules = cfg.rules_for(watch.relid);
    let thresholds = gucs::thresholds();
    let mut replay = Replay::new(scoring::feature_config());
    let mut reservoir: Reservoir<Example> = Reservoir::new(max_rows, seed);
    let mut positives = Vec::new();
    let (mut replayed, mut in_window) = (0u64, 0u64);
    let now = scoring::now_us();
    let order = match &cols.key {
        Some(k) => format!("t.{}, t.{}", quote_identifier(&cols.ts.name), quote_identifier(&k.name)),
        None => format!("t.{}", quote_identifier(&cols.ts.name)),
    };
    // The caller's own rights on their table: training reads what they may read.
    let sql = format!("SELECT t FROM {} AS t ORDER BY {order}", watch.name);
    admin::scan(&sql, |batch| {
        for r in batch {
            let Some(t) = r.get::<PgHeapTuple<'_, AllocatedByRust>>(1)? else { continue };
            let row = admin::composite_values(watch, t);
            let t_us = scoring::effective_time(&row, now);
            // Replayed rows arrive "on time": no clock skew, as for a live insert.
            let txn = row.txn(t_us, t_us);
            let fv = replay.step(&txn, |fv| score::decide(&rules, fv, &[], &thresholds).alert);
            replayed += 1;
            let label = row.key.as_ref().and_then(|k| labels.get(k)).copied();
            if let Some((is_fraud, at)) = label {
                // A label given before its row existed (back-dated) counts from the row.
                replay.schedule_label(txn.entity, txn.merchant, is_fraud, at.max(t_us));
            }
            if !window.contains(t_us) {
                continue;
            }
            in_window += 1;
            let label = label.map(|(f, _)| f);
            let make = || {
                let mut x = Vec::with_capacity(ids.len());
                fv.model_row(ids, &mut x);
                Example { x, t_us, label, key: row.key.clone() }
            };
            match (sampling, label) {
                (Sampling::Uniform, _) => reservoir.offer(make),
                (Sampling::Supervised { .. }, Some(true)) => positives.push(make()),
                (Sampling::Supervised { .. }, Some(false)) => reservoir.offer(make),
                (Sampling::Supervised { unlabelled_as_genuine: true }, None) => reservoir.offer(make),
                (Sampling::Supervised { unlabelled_as_genuine: false }, None) => {}
            }
        }
        Ok(())
    })?;
    let mut examples = positives;
    examples.extend(reservoir.into_items());
    // Deterministic order (time, then key) whatever the sampling did.
    examples.sort_by(|a, b| a.t_us.cmp(&b.t_us).then_with(|| a.key.cmp(&b.key)));
    Ok(Collected { examples, replayed, in_window })
}

/// Drops feature columns with no finite value in the sample (e.g. a second location that
/// is not mapped); returns the kept ids and the dropped names.
fn usable_features(ids: &[usize], examples: &[Example]) -> (Vec<usize>, Vec<usize>, Vec<&'static str>) {
    let mut keep_cols = Vec::new();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (j, &id) in ids.iter().enumerate() {
        if examples.iter().any(|e| e.x[j].is_finite()) {
            keep_cols.push(j);
            kept.push(id);
        } else {
            dropped.push(FEATURES[id].name);
        }
    }
    (keep_cols, kept, dropped)
}

fn matrix(examples: &[Example], cols: &[usize]) -> Vec<f64> {
    let mut x = Vec::with_capacity(examples.len() * cols.len());
    for e in examples {
        x.extend(cols.iter().map(|&j| e.x[j]));
    }
    x
}

fn model_error(name: &str, e: fraud_models::ModelError) -> FraudError {
    FraudError::InvalidArgument(format!("training model \"{name}\": {e}"))
}

// ---------------------------------------------------------------------------------------
// Registry.

/// When a freshly trained version goes live.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DeployPolicy {
    /// Always.
    Always,
    /// Never (deploy by hand with `fraud.deploy`).
    Never,
    /// When its validation metric is not worse than the active version's.
    IfBetter,
}

fn deploy_policy(s: &str) -> Result<DeployPolicy> {
    match s {
        "always" => Ok(DeployPolicy::Always),
        "never" => Ok(DeployPolicy::Never),
        "if_better" => Ok(DeployPolicy::IfBetter),
        other => {
            Err(FraudError::InvalidArgument(format!("deploy must be 'if_better', 'always' or 'never', got '{other}'")))
        }
    }
}

/// The metric versions are compared on: average precision (what matters with rare fraud),
/// else ROC AUC.
fn headline(metrics: &Json) -> Option<(&'static str, f64)> {
    ["average_precision", "auc"].into_iter().find_map(|k| metrics.get(k).and_then(Json::as_f64).map(|v| (k, v)))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FraudError::InvalidArgument(format!(
            "model name \"{name}\" must be lowercase letters, digits and _ , starting with a letter (at most 63)"
        )))
    }
}

/// The active version of `name` and its metrics.
fn active_version(name: &str) -> Result<Option<(i32, Json)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT version, metrics FROM fraud.models WHERE name OPERATOR(pg_catalog.=) $1 AND active",
            Some(1),
            &[name.into()],
        )?;
        for r in rows {
            let v: Option<i32> = r.get(1)?;
            let m: Option<JsonB> = r.get(2)?;
            if let Some(v) = v {
                return Ok(Some((v, m.map_or(Json::Null, |j| j.0))));
            }
        }
        Ok(None)
    })
}

/// Serializes registry changes to one model name (versions, deploys) until the transaction
/// ends, so two concurrent trainings cannot both claim the next version.
fn lock_name(name: &str) -> Result<()> {
    Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_fraud.model:' OPERATOR(pg_catalog.||) $1))",
        &[name.into()],
    )?;
    Ok(())
}

/// Makes `version` the active one and records why.
fn activate(name: &str, version: Option<i32>, action: &str, reason: &str) -> Result<()> {
    lock_name(name)?;
    // Two statements: the one-active-per-name index is checked row by row.
    Spi::run_with_args(
        "UPDATE fraud.models SET active = false WHERE name OPERATOR(pg_catalog.=) $1 AND active",
        &[name.into()],
    )?;
    if let Some(v) = version {
        Spi::run_with_args(
            "UPDATE fraud.models SET active = true WHERE name OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
            &[name.into(), v.into()],
        )?;
    }
    Spi::run_with_args(
        "INSERT INTO fraud.model_deployments (name, version, action, reason) VALUES ($1, $2, $3, $4)",
        &[name.into(), version.into(), action.into(), reason.into()],
    )?;
    Ok(())
}

/// Checks that a stored version exists and decodes, so a broken blob is refused at deploy
/// time instead of being skipped on every row.
fn check_loadable(name: &str, version: i32) -> Result<()> {
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM fraud.models WHERE name OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2)",
        &[name.into(), version.into()],
    )?
    .unwrap_or(false);
    if !exists {
        let versions = Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.string_agg(version::pg_catalog.text, ', ' ORDER BY version) FROM fraud.models WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )?;
        return Err(FraudError::InvalidArgument(match versions {
            Some(v) => format!("model \"{name}\" has no version {version} (versions: {v})"),
            None => format!("there is no model named \"{name}\""),
        }));
    }
    load(name, version).map(|_| ()).map_err(|message| FraudError::Model { name: name.into(), version, message })
}

/// What a training run produced, before it is stored.
struct Trained {
    kind: &'static str,
    model: Model,
    params: Json,
    metrics: Json,
    weight: f64,
    from: f64,
    to: f64,
    rows: usize,
    seconds: f64,
}

/// Stores a trained version and deploys it if the policy says so; returns the summary.
fn store(name: &str, watch: &Watch, t: Trained, policy: DeployPolicy) -> Result<Json> {
    let blob = t.model.to_bytes().map_err(|e| model_error(name, e))?;
    let features: Vec<String> = t.model.feature_names().to_vec();
    lock_name(name)?;
    let version = Spi::get_one_with_args::<i32>(
        "INSERT INTO fraud.models (name, version, kind, source_table, features, params, metrics, training_rows, \
                                   training_seconds, weight, signal_from, signal_to, model) \
         SELECT $1, COALESCE(pg_catalog.max(version), 0) OPERATOR(pg_catalog.+) 1, $2, $3::pg_catalog.oid::pg_catalog.regclass, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
           FROM fraud.models WHERE name OPERATOR(pg_catalog.=) $1 \
         RETURNING version",
        &[
            name.into(),
            t.kind.into(),
            watch.relid.into(),
            features.into(),
            JsonB(t.params.clone()).into(),
            JsonB(t.metrics.clone()).into(),
            (t.rows as i64).into(),
            t.seconds.into(),
            t.weight.into(),
            t.from.into(),
            t.to.into(),
            blob.as_slice().into(),
        ],
    )?
    .ok_or_else(|| FraudError::Config("INSERT INTO fraud.models returned no version".into()))?;
    let active = active_version(name)?;
    let (deploy, reason) = match (policy, &active) {
        (DeployPolicy::Never, _) => (false, "deploy => 'never'".to_string()),
        (DeployPolicy::Always, _) => (true, "deploy => 'always'".to_string()),
        (DeployPolicy::IfBetter, None) => (true, "first version deployed".to_string()),
        (DeployPolicy::IfBetter, Some((old_v, old_m))) => match (headline(&t.metrics), headline(old_m)) {
            (Some((k, new)), Some((k_old, old))) if k == k_old => {
                if new >= old {
                    (true, format!("{k} {new:.4} >= {old:.4} of version {old_v}"))
                } else {
                    (false, format!("{k} {new:.4} < {old:.4} of version {old_v}: kept version {old_v}"))
                }
            }
            (None, None) => (true, format!("no labels to compare with version {old_v}: newest deployed")),
            _ => (
                false,
                format!("versions {old_v} and {version} have no common validation metric: kept version {old_v}"),
            ),
        },
    };
    if deploy {
        activate(name, Some(version), "deploy", &format!("trained: {reason}"))?;
    }
    Ok(json!({
        "name": name,
        "version": version,
        "kind": t.kind,
        "source_table": watch.name,
        "training_rows": t.rows,
        "training_seconds": (t.seconds * 1000.0).round() / 1000.0,
        "metrics": t.metrics,
        "deployed": deploy,
        "reason": reason,
    }))
}

fn ts_us(what: &str, t: Option<TimestampWithTimeZone>) -> Result<Option<i64>> {
    t.map(|t| crate::api::finite_us(what, t)).transpose()
}

/// A count argument (trees, rows...) that must be at least 1.
fn positive(what: &str, v: i32) -> Result<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| FraudError::InvalidArgument(format!("{what} must be a positive integer, got {v}")))
}

fn check_weight(weight: f64) -> Result<()> {
    if (0.0..=1.0).contains(&weight) {
        Ok(())
    } else {
        Err(FraudError::InvalidArgument(format!("weight must be between 0 and 1, got {weight}")))
    }
}

fn check_max_rows(max_rows: i32) -> Result<usize> {
    if max_rows >= 2 {
        Ok(max_rows as usize)
    } else {
        Err(FraudError::InvalidArgument(format!("max_rows must be at least 2, got {max_rows}")))
    }
}

fn split_metrics(scores: &[f64], labels: &[bool], threshold: f64) -> Json {
    let positives = labels.iter().filter(|&&y| y).count();
    let c = metrics::confusion(scores, labels, threshold).ok();
    json!({
        "rows": labels.len(),
        "positives": positives,
        "auc": metrics::roc_auc(scores, labels).ok(),
        "average_precision": metrics::average_precision(scores, labels).ok(),
        "threshold": threshold,
        "precision": c.and_then(|c| c.precision()),
        "recall": c.and_then(|c| c.recall()),
    })
}

/// The output at which precision and recall count a row as flagged: where the model's signal
/// alone reaches the alert threshold, or, for a model too light to alert alone, where its
/// output reaches the alert threshold on its own scale (`fraud.model_performance` agrees).
fn flag_output(from: f64, to: f64, weight: f64) -> f64 {
    let alert = gucs::ALERT_THRESHOLD.get();
    let share = if weight >= alert { alert / weight } else { alert };
    from + (to - from) * share
}

/// Quantile `q` of `v` (sorted copy, nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.5;
    }
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

#[allow(clippy::too_many_arguments)]
fn train_iforest(
    name: &str,
    source: Option<&RegClass>,
    params: IsolationForestParams,
    contamination: f64,
    weight: f64,
    features: Option<Vec<String>>,
    window: Window,
    max_rows: i32,
    policy: &str,
) -> Result<Json> {
    check_name(name)?;
    check_weight(weight)?;
    let policy = deploy_policy(policy)?;
    if !(contamination > 0.0 && contamination < 0.5) {
        return Err(FraudError::InvalidArgument(format!("contamination must be in (0, 0.5), got {contamination}")));
    }
    let max_rows = check_max_rows(max_rows)?;
    let cfg = catalog::config()?;
    let watch = crate::api::watch_for(&cfg, source)?;
    let ids = feature_ids(features.as_deref())?;
    let started = Instant::now();
    let data = collect(&cfg, &watch, &ids, &window, Sampling::Uniform, max_rows, params.seed)?;
    let ex = &data.examples;
    if ex.len() < 2 {
        return Err(FraudError::InvalidArgument(format!(
            "training model \"{name}\": {} has {} rows in the training window; at least 2 are needed",
            watch.name,
            ex.len()
        )));
    }
    let (cols, kept, dropped) = usable_features(&ids, ex);
    let names: Vec<&str> = kept.iter().map(|&i| FEATURES[i].name).collect();
    let x = matrix(ex, &cols);
    let labelled = ex.iter().any(|e| e.label == Some(true));
    // With fraud labels, fit on the older rows and measure on the newest; without, fit on all.
    let (train_rows, validation): (Vec<usize>, Vec<usize>) = if labelled {
        let ts: Vec<i64> = ex.iter().map(|e| e.t_us).collect();
        let s = time_split(&ts, 0.2).map_err(|e| model_error(name, e))?;
        (s.train, s.validation)
    } else {
        ((0..ex.len()).collect(), Vec::new())
    };
    let xt = matrix_rows(&x, cols.len(), &train_rows);
    let view = ArrayView2::from_shape((train_rows.len(), cols.len()), &xt)
        .map_err(|e| FraudError::Config(format!("training matrix: {e}")))?;
    let forest = IsolationForest::fit(view, &names, &params).map_err(|e| model_error(name, e))?;
    let train_scores = forest.score_batch(view).map_err(|e| model_error(name, e))?;
    let from = quantile(&train_scores, 1.0 - contamination).clamp(0.0, 0.99);
    let to = quantile(&train_scores, 1.0).max(from + 0.01).min(1.0);
    let mut m = json!({
        "replayed_rows": data.replayed,
        "window_rows": data.in_window,
        "train_rows": train_rows.len(),
        "signal_from_quantile": 1.0 - contamination,
        "dropped_features": dropped,
    });
    if !validation.is_empty() {
        let mut scores = Vec::with_capacity(validation.len());
        let mut labels = Vec::with_capacity(validation.len());
        for &i in &validation {
            let row = &x[i * cols.len()..(i + 1) * cols.len()];
            scores.push(forest.score(row).map_err(|e| model_error(name, e))?);
            labels.push(ex[i].label.unwrap_or(false));
        }
        let at = flag_output(from, to, weight);
        let s = split_metrics(&scores, &labels, at);
        merge(&mut m, json!({"validation_rows": s["rows"], "validation_positives": s["positives"]}));
        merge(&mut m, s);
        if let Some(o) = m.as_object_mut() {
            o.remove("rows");
            o.remove("positives");
        }
    }
    let model = Model::from(forest);
    merge(&mut m, json!({ "model": model.summary() }));
    let p = json!({
        "n_trees": params.n_trees, "sample_size": params.sample_size, "max_depth": params.max_depth,
        "seed": params.seed, "contamination": contamination, "weight": weight,
        "features": features, "max_rows": max_rows,
    });
    let t = Trained {
        kind: "isolation_forest",
        model,
        params: p,
        metrics: m,
        weight,
        from,
        to,
        rows: train_rows.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    store(name, &watch, t, policy)
}

fn matrix_rows(x: &[f64], width: usize, rows: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &i in rows {
        out.extend_from_slice(&x[i * width..(i + 1) * width]);
    }
    out
}

fn merge(into: &mut Json, from: Json) {
    if let (Some(a), Json::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

struct ClassifierCall {
    params: ClassifierParams,
    validation_fraction: f64,
    weight: f64,
    features: Option<Vec<String>>,
    unlabelled_as_genuine: bool,
    max_rows: i32,
}

fn train_supervised(
    name: &str,
    source: Option<&RegClass>,
    call: ClassifierCall,
    window: Window,
    policy: &str,
) -> Result<Json> {
    check_name(name)?;
    check_weight(call.weight)?;
    if call.weight == 0.0 {
        return Err(FraudError::InvalidArgument("weight must be above 0 for a classifier".into()));
    }
    let policy = deploy_policy(policy)?;
    let max_rows = check_max_rows(call.max_rows)?;
    let cfg = catalog::config()?;
    let watch = crate::api::watch_for(&cfg, source)?;
    if watch.columns.as_ref().is_ok_and(|c| c.key.is_none()) {
        return Err(FraudError::InvalidArgument(format!(
            "{} has no key column, so its rows cannot be labelled: watch it with key => '...'",
            watch.name
        )));
    }
    let ids = feature_ids(call.features.as_deref())?;
    let started = Instant::now();
    let sampling = Sampling::Supervised { unlabelled_as_genuine: call.unlabelled_as_genuine };
    let data = collect(&cfg, &watch, &ids, &window, sampling, max_rows, call.params.seed)?;
    let ex = &data.examples;
    let positives = ex.iter().filter(|e| e.label == Some(true)).count();
    if positives == 0 {
        return Err(FraudError::InvalidArgument(format!(
            "training model \"{name}\": no row of {} in the training window is labelled fraud (fraud.label(...))",
            watch.name
        )));
    }
    if positives == ex.len() {
        return Err(FraudError::InvalidArgument(format!(
            "training model \"{name}\": every training row is labelled fraud; genuine rows are needed too"
        )));
    }
    let (cols, kept, dropped) = usable_features(&ids, ex);
    let names: Vec<&str> = kept.iter().map(|&i| FEATURES[i].name).collect();
    let x = matrix(ex, &cols);
    let view = ArrayView2::from_shape((ex.len(), cols.len()), &x)
        .map_err(|e| FraudError::Config(format!("training matrix: {e}")))?;
    let labels: Vec<bool> = ex.iter().map(|e| e.label.unwrap_or(false)).collect();
    let ts: Vec<i64> = ex.iter().map(|e| e.t_us).collect();
    let threshold = flag_output(0.0, 1.0, call.weight);
    let config = TrainConfig { validation_fraction: call.validation_fraction, threshold };
    let (clf, report) =
        train_classifier(view, &labels, &ts, &names, &call.params, &config).map_err(|e| model_error(name, e))?;
    let mut m = serde_json::to_value(&report).unwrap_or(Json::Null);
    merge(
        &mut m,
        json!({
            "replayed_rows": data.replayed,
            "window_rows": data.in_window,
            "dropped_features": dropped,
        }),
    );
    let model = Model::from(clf);
    merge(&mut m, json!({ "model": model.summary() }));
    let p = &call.params;
    let params = json!({
        "n_trees": p.n_trees, "max_depth": p.max_depth, "min_samples_leaf": p.min_samples_leaf,
        "max_features": p.max_features, "negatives_per_positive": p.negatives_per_positive,
        "base_rate": p.base_rate, "seed": p.seed, "validation_fraction": call.validation_fraction,
        "weight": call.weight, "features": call.features, "unlabelled_as_genuine": call.unlabelled_as_genuine,
        "max_rows": call.max_rows,
    });
    let t = Trained {
        kind: "classifier",
        model,
        params,
        metrics: m,
        weight: call.weight,
        from: 0.0,
        to: 1.0,
        rows: report.train_rows,
        seconds: started.elapsed().as_secs_f64(),
    };
    store(name, &watch, t, policy)
}

/// The versions `fraud.rollback` can return to: the deploy log replayed as a stack (deploy
/// pushes, rollback pops, undeploy pushes "nothing").
fn deployment_stack(name: &str) -> Result<Vec<Option<i32>>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT version, action FROM fraud.model_deployments WHERE name OPERATOR(pg_catalog.=) $1 ORDER BY id",
            None,
            &[name.into()],
        )?;
        let mut stack = Vec::new();
        for r in rows {
            let v: Option<i32> = r.get(1)?;
            match r.get::<String>(2)?.as_deref() {
                Some("rollback") => {
                    stack.pop();
                }
                _ => stack.push(v),
            }
        }
        Ok(stack)
    })
}

fn rollback_model(name: &str) -> Result<Option<i32>> {
    let mut stack = deployment_stack(name)?;
    let current = active_version(name)?.map(|(v, _)| v);
    if stack.is_empty() && current.is_none() {
        return Err(FraudError::InvalidArgument(format!("model \"{name}\" has never been deployed")));
    }
    stack.pop();
    // Skip versions deleted since they were deployed.
    while let Some(Some(v)) = stack.last() {
        if check_loadable(name, *v).is_ok() {
            break;
        }
        stack.pop();
    }
    let Some(target) = stack.last().copied() else {
        return Err(FraudError::InvalidArgument(format!(
            "model \"{name}\" has no earlier deployment to roll back to (use fraud.undeploy to switch it off)"
        )));
    };
    let reason = match (current, target) {
        (Some(c), Some(t)) => format!("rolled back from version {c} to {t}"),
        (Some(c), None) => format!("rolled back from version {c} to no model"),
        (None, Some(t)) => format!("rolled back to version {t}"),
        (None, None) => "rolled back to no model".into(),
    };
    activate(name, target, "rollback", &reason)?;
    Ok(target)
}

#[pg_schema]
mod fraud {
    use super::*;

    /// Trains an isolation forest on the point-in-time features of a watched table's rows
    /// (history replayed in time order), stores it as the next version of `name`, and
    /// deploys it according to `deploy`. Returns what was trained and why it was (not)
    /// deployed.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::too_many_arguments)]
    fn train_isolation_forest(
        name: &str,
        source: default!(Option<RegClass>, "NULL"),
        n_trees: default!(i32, 100),
        sample_size: default!(i32, 256),
        max_depth: default!(Option<i32>, "NULL"),
        seed: default!(i64, 42),
        contamination: default!(f64, 0.01),
        weight: default!(f64, 0.5),
        features: default!(Option<Vec<String>>, "NULL"),
        since: default!(Option<TimestampWithTimeZone>, "NULL"),
        until: default!(Option<TimestampWithTimeZone>, "NULL"),
        max_rows: default!(i32, 200_000),
        deploy: default!(&str, "'if_better'"),
    ) -> SqlResult<JsonB> {
        let run = || -> Result<JsonB> {
            let params = IsolationForestParams {
                n_trees: positive("n_trees", n_trees)?,
                sample_size: positive("sample_size", sample_size)?,
                max_depth: max_depth.map(|d| positive("max_depth", d)).transpose()?,
                seed: seed as u64,
            };
            let window = Window { since_us: ts_us("since", since)?, until_us: ts_us("until", until)? };
            train_iforest(name, source.as_ref(), params, contamination, weight, features, window, max_rows, deploy)
                .map(JsonB)
        };
        run().map_err(|e| e.report())
    }

    /// Trains a supervised classifier (a random forest grown on class-balanced samples,
    /// calibrated back to the real fraud rate) on labelled rows' point-in-time features,
    /// validates it on the most recent `validation_fraction` of them, stores it as the next
    /// version of `name` and deploys it according to `deploy`.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::too_many_arguments)]
    fn train_classifier(
        name: &str,
        source: default!(Option<RegClass>, "NULL"),
        n_trees: default!(i32, 100),
        max_depth: default!(i32, 12),
        min_samples_leaf: default!(i32, 1),
        max_features: default!(Option<i32>, "NULL"),
        negatives_per_positive: default!(f64, 1.0),
        base_rate: default!(Option<f64>, "NULL"),
        seed: default!(i64, 42),
        validation_fraction: default!(f64, 0.2),
        weight: default!(f64, 1.0),
        features: default!(Option<Vec<String>>, "NULL"),
        since: default!(Option<TimestampWithTimeZone>, "NULL"),
        until: default!(Option<TimestampWithTimeZone>, "NULL"),
        unlabelled_as_genuine: default!(bool, true),
        max_rows: default!(i32, 500_000),
        deploy: default!(&str, "'if_better'"),
    ) -> SqlResult<JsonB> {
        let run = || -> Result<JsonB> {
            let params = ClassifierParams {
                n_trees: positive("n_trees", n_trees)?,
                max_depth: u16::try_from(positive("max_depth", max_depth)?).unwrap_or(u16::MAX),
                min_samples_leaf: positive("min_samples_leaf", min_samples_leaf)?,
                max_features: max_features.map(|m| positive("max_features", m)).transpose()?,
                max_samples: None,
                negatives_per_positive,
                base_rate,
                seed: seed as u64,
            };
            let call =
                ClassifierCall { params, validation_fraction, weight, features, unlabelled_as_genuine, max_rows };
            let window = Window { since_us: ts_us("since", since)?, until_us: ts_us("until", until)? };
            train_supervised(name, source.as_ref(), call, window, deploy).map(JsonB)
        };
        run().map_err(|e| e.report())
    }

    /// Makes `version` the active version of model `name`; every backend scores with it
    /// from its next row. The blob is decoded first: a corrupt version is refused.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn deploy(name: &str, version: i32) -> SqlResult<bool> {
        let run = || -> Result<bool> {
            check_loadable(name, version)?;
            activate(name, Some(version), "deploy", "deployed by hand")?;
            Ok(true)
        };
        run().map_err(|e| e.report())
    }

    /// Returns model `name` to the version deployed before the current one; returns that
    /// version (NULL when it goes back to no model).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn rollback(name: &str) -> SqlResult<Option<i32>> {
        rollback_model(name).map_err(|e| e.report())
    }

    /// Switches model `name` off (its versions stay in `fraud.models`).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn undeploy(name: &str) -> SqlResult<bool> {
        let run = || -> Result<bool> {
            let Some((v, _)) = active_version(name)? else { return Ok(false) };
            activate(name, None, "undeploy", &format!("version {v} undeployed by hand"))?;
            Ok(true)
        };
        run().map_err(|e| e.report())
    }

    /// Retrains every deployed model (or only `name`) with its active version's parameters
    /// on the rows of the last `training_window`, deploying each new version only if its
    /// validation metric is not worse. Scheduled by `sql/cron.sql`.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::type_complexity)] // pgrx needs the row type spelled out in the signature
    fn retrain(
        name: default!(Option<&str>, "NULL"),
        training_window: default!(Interval, "'90 days'"),
    ) -> std::result::Result<
        TableIterator<
            'static,
            (name!(name, String), name!(version, Option<i32>), name!(deployed, bool), name!(detail, JsonB)),
        >,
        pgrx::pg_sys::panic::ErrorReport,
    > {
        retrain_all(name, training_window).map(TableIterator::new).map_err(|e| e.report())
    }

    /// The point-in-time feature vectors of a watched table's rows, exactly as training sees
    /// them (history replayed in time order), with each row's label: for export and audit.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    #[allow(clippy::type_complexity)] // pgrx needs the row type spelled out in the signature
    fn feature_matrix(
        source: default!(Option<RegClass>, "NULL"),
        since: default!(Option<TimestampWithTimeZone>, "NULL"),
        until: default!(Option<TimestampWithTimeZone>, "NULL"),
        features: default!(Option<Vec<String>>, "NULL"),
    ) -> std::result::Result<
        TableIterator<
            'static,
            (
                name!(row_key, Option<String>),
                name!(ts, TimestampWithTimeZone),
                name!(is_fraud, Option<bool>),
                name!(features, Vec<Option<f64>>),
            ),
        >,
        pgrx::pg_sys::panic::ErrorReport,
    > {
        let run = || -> Result<_> {
            let cfg = catalog::config()?;
            let watch = crate::api::watch_for(&cfg, source.as_ref())?;
            let ids = feature_ids(features.as_deref())?;
            let window = Window { since_us: ts_us("since", since)?, until_us: ts_us("until", until)? };
            let data = collect(&cfg, &watch, &ids, &window, Sampling::Uniform, usize::MAX, 0)?;
            let rows: Vec<_> = data
                .examples
                .into_iter()
                .map(|e| {
                    let ts = TimestampWithTimeZone::try_from(crate::rowread::unix_us_to_timestamptz(e.t_us))
                        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity());
                    (e.key, ts, e.label, e.x.into_iter().map(|v| v.is_finite().then_some(v)).collect())
                })
                .collect();
            Ok(TableIterator::new(rows))
        };
        run().map_err(|e| e.report())
    }

    /// ROC AUC, average precision, and precision/recall at `threshold` of `scores` against
    /// `labels` (pairs with a NULL or non-finite score or a NULL label are skipped): the
    /// same code that validates models, for ad-hoc evaluation and the quality views.
    #[pg_extern(immutable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn classification_metrics(
        scores: Vec<Option<f64>>,
        labels: Vec<Option<bool>>,
        threshold: default!(f64, 0.5),
    ) -> SqlResult<JsonB> {
        let run = || -> Result<JsonB> {
            if scores.len() != labels.len() {
                return Err(FraudError::InvalidArgument(format!(
                    "scores has {} elements but labels has {}",
                    scores.len(),
                    labels.len()
                )));
            }
            if threshold.is_nan() {
                return Err(FraudError::InvalidArgument("threshold must not be NaN".into()));
            }
            let (s, l): (Vec<f64>, Vec<bool>) =
                scores.iter().zip(&labels).filter_map(|(s, l)| Some(((*s).filter(|s| s.is_finite())?, (*l)?))).unzip();
            Ok(JsonB(split_metrics(&s, &l, threshold)))
        };
        run().map_err(|e| e.report())
    }

    /// The feature names `fraud.feature_matrix` returns, in order.
    #[pg_extern(immutable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn model_features(features: default!(Option<Vec<String>>, "NULL")) -> SqlResult<Vec<String>> {
        feature_ids(features.as_deref())
            .map(|ids| ids.into_iter().map(|i| FEATURES[i].name.to_string()).collect())
            .map_err(|e| e.report())
    }
}

type RetrainRow = (String, Option<i32>, bool, JsonB);

fn retrain_all(only: Option<&str>, window: Interval) -> Result<Vec<RetrainRow>> {
    let window_us = crate::api::window_us(&window)?;
    let now = scoring::now_us();
    let since = now.saturating_sub(window_us);
    let targets: Vec<(String, String, Json, Oid)> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT name, kind, params, source_table::pg_catalog.oid FROM fraud.models \
              WHERE active AND ($1::pg_catalog.text IS NULL OR name OPERATOR(pg_catalog.=) $1) ORDER BY name",
            None,
            &[only.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            if let (Some(n), Some(k), Some(p), Some(o)) =
                (r.get::<String>(1)?, r.get::<String>(2)?, r.get::<JsonB>(3)?, r.get::<Oid>(4)?)
            {
                out.push((n, k, p.0, o));
            }
        }
        Ok::<_, FraudError>(out)
    })?;
    if let (Some(n), true) = (only, targets.is_empty()) {
        return Err(FraudError::InvalidArgument(format!("model \"{n}\" has no deployed version to retrain")));
    }
    let mut out = Vec::new();
    for (name, kind, p, relid) in targets {
        let src = RegClass(relid);
        let window = Window { since_us: Some(since), until_us: None };
        let get_u = |k: &str, d: u64| p.get(k).and_then(Json::as_u64).unwrap_or(d);
        let get_f = |k: &str, d: f64| p.get(k).and_then(Json::as_f64).unwrap_or(d);
        let feats: Option<Vec<String>> = p.get("features").and_then(|f| serde_json::from_value(f.clone()).ok());
        let max_rows = i32::try_from(get_u("max_rows", 200_000)).unwrap_or(i32::MAX);
        // A model that cannot retrain (e.g. no rows in the window) reports why in its row;
        // the others still retrain.
        let result = match kind.as_str() {
            "isolation_forest" => train_iforest(
                &name,
                Some(&src),
                IsolationForestParams {
                    n_trees: get_u("n_trees", 100) as usize,
                    sample_size: get_u("sample_size", 256) as usize,
                    max_depth: p.get("max_depth").and_then(Json::as_u64).map(|d| d as usize),
                    seed: get_u("seed", 42),
                },
                get_f("contamination", 0.01),
                get_f("weight", 0.5),
                feats,
                window,
                max_rows,
                "if_better",
            ),
            _ => train_supervised(
                &name,
                Some(&src),
                ClassifierCall {
                    params: ClassifierParams {
                        n_trees: get_u("n_trees", 100) as usize,
                        max_depth: get_u("max_depth", 12) as u16,
                        min_samples_leaf: get_u("min_samples_leaf", 1) as usize,
                        max_features: p.get("max_features").and_then(Json::as_u64).map(|m| m as usize),
                        max_samples: None,
                        negatives_per_positive: get_f("negatives_per_positive", 1.0),
                        base_rate: p.get("base_rate").and_then(Json::as_f64),
                        seed: get_u("seed", 42),
                    },
                    validation_fraction: get_f("validation_fraction", 0.2),
                    weight: get_f("weight", 1.0),
                    features: feats,
                    unlabelled_as_genuine: p.get("unlabelled_as_genuine").and_then(Json::as_bool).unwrap_or(true),
                    max_rows,
                },
                window,
                "if_better",
            ),
        };
        match result {
            Ok(j) => {
                let version = j.get("version").and_then(Json::as_i64).map(|v| v as i32);
                let deployed = j.get("deployed").and_then(Json::as_bool).unwrap_or(false);
                out.push((name, version, deployed, JsonB(j)));
            }
            Err(e) => out.push((name, None, false, JsonB(json!({"error": e.to_string()})))),
        }
    }
    Ok(out)
}
