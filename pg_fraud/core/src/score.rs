//! From features to a decision: rules and the model each contribute a probability-like
//! signal, combined with noisy-OR, and every contribution is reported so they add up to the
//! score.
//!
//! A signal of strength `p` means "on its own, this suggests fraud with probability p". The
//! score is `1 − Π(1 − pᵢ)`: independent signals reinforce each other but never exceed 1, and
//! one strong signal is enough. Each signal's share of the score is proportional to
//! `−ln(1 − pᵢ)`, its additive weight in log-survival space, so the shares sum exactly to the
//! score and an analyst can read "impossible_travel: 0.41 of 0.83".

use serde_json::{json, Map, Value as Json};

use crate::features::FeatureVector;
use crate::rules::Compiled;

/// What a rule does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Adds its weight to the score.
    Score,
    /// Adds its weight and sends the row for review (an alert) whatever the score.
    Review,
    /// Adds its weight and rejects the insert (when `pg_fraud.enforce_blocks` is on).
    Block,
    /// Allow-list: the row is allowed with score 0, whatever else fired.
    Allow,
}

impl Action {
    /// The SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Score => "score",
            Action::Review => "review",
            Action::Block => "block",
            Action::Allow => "allow",
        }
    }

    /// Parses the SQL spelling.
    pub fn parse(s: &str) -> Option<Action> {
        [Action::Score, Action::Review, Action::Block, Action::Allow].into_iter().find(|a| a.as_str() == s)
    }
}

/// Severity, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Below the medium threshold.
    Low,
    /// Worth a look.
    Medium,
    /// At or above the alert threshold.
    High,
    /// At or above the critical threshold.
    Critical,
}

impl Level {
    /// The SQL spelling (`fraud.risk_level`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }
}

/// The decision for the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let it through, no alert.
    Allow,
    /// Let it through and alert.
    Review,
    /// Reject the insert.
    Block,
}

impl Decision {
    /// The SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Review => "review",
            Decision::Block => "block",
        }
    }
}

/// A rule ready to evaluate.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    /// Unique name (shown as a reason).
    pub name: String,
    /// The source text, shown in explanations.
    pub expression: String,
    /// The compiled expression.
    pub compiled: Compiled,
    /// Probability-like weight in [0, 1] at full strength.
    pub weight: f64,
    /// What firing does.
    pub action: Action,
}

/// An active model's output for the row.
#[derive(Clone, Debug)]
pub struct ModelSignal {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: i32,
    /// Model kind (e.g. `isolation_forest`).
    pub kind: String,
    /// Raw model output in [0, 1].
    pub raw: f64,
    /// The signal it contributes, in [0, 1] (raw output mapped and weighted by the caller).
    pub p: f64,
    /// Features that drove it, with their share.
    pub top_features: Vec<(String, f64)>,
}

/// Score thresholds, from the GUCs.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Score at which a row is `medium`.
    pub medium: f64,
    /// Score at which a row is `high` and alerts.
    pub alert: f64,
    /// Score at which a row is `critical`.
    pub critical: f64,
    /// Score at which a row is blocked; `None` = never by score.
    pub block: Option<f64>,
    /// Whether block decisions reject the insert (off = shadow mode: they alert instead).
    pub enforce_blocks: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { medium: 0.4, alert: 0.7, critical: 0.9, block: None, enforce_blocks: true }
    }
}

/// Where a contribution comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A rule.
    Rule,
    /// The model.
    Model,
}

/// One signal's part of the score.
#[derive(Clone, Debug)]
pub struct Contribution {
    /// Rule name, or `model:<name>`.
    pub name: String,
    /// Rule or model.
    pub source: Source,
    /// The signal's own strength in [0, 1].
    pub p: f64,
    /// Its share of the score; all shares add up to the score.
    pub contribution: f64,
    /// Human-readable detail (the rule's expression, the model's top features).
    pub detail: String,
}

/// The full decision for one row.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Risk score in [0, 1].
    pub score: f64,
    /// Severity.
    pub level: Level,
    /// What to do.
    pub decision: Decision,
    /// Whether to write an alert.
    pub alert: bool,
    /// Contributions, largest first; they sum to `score`.
    pub contributions: Vec<Contribution>,
    /// The allow rule that won, if any.
    pub allowed_by: Option<String>,
    /// Review/block rules that fired.
    pub forced_by: Vec<String>,
}

/// Largest signal strength used in the log transform: keeps `−ln(1 − p)` finite while making a
/// p = 1 signal dominate any realistic set of others.
const MAX_P: f64 = 1.0 - 1e-12;

/// Scores one row.
pub fn decide(rules: &[RuleSpec], fv: &FeatureVector, models: &[ModelSignal], th: &Thresholds) -> Outcome {
    let mut contributions = Vec::new();
    let mut forced_by = Vec::new();
    let mut block_rule = false;
    let mut review_rule = false;
    for rule in rules {
        let strength = rule.compiled.strength(fv);
        if strength <= 0.0 {
            continue;
        }
        match rule.action {
            Action::Allow => {
                return Outcome {
                    score: 0.0,
                    level: Level::Low,
                    decision: Decision::Allow,
                    alert: false,
                    contributions: Vec::new(),
                    allowed_by: Some(rule.name.clone()),
                    forced_by: Vec::new(),
                };
            }
            Action::Block => {
                block_rule = true;
                forced_by.push(rule.name.clone());
            }
            Action::Review => {
                review_rule = true;
                forced_by.push(rule.name.clone());
            }
            Action::Score => {}
        }
        let p = (rule.weight * strength).clamp(0.0, 1.0);
        if p > 0.0 {
            contributions.push(Contribution {
                name: rule.name.clone(),
                source: Source::Rule,
                p,
                contribution: 0.0,
                detail: rule.expression.clone(),
            });
        }
    }
    for m in models.iter().filter(|m| m.p > 0.0 && m.p.is_finite()) {
        let top: Vec<String> = m.top_features.iter().take(3).map(|(n, s)| format!("{n} {:.0}%", s * 100.0)).collect();
        contributions.push(Contribution {
            name: format!("model:{}", m.name),
            source: Source::Model,
            p: m.p.clamp(0.0, 1.0),
            contribution: 0.0,
            detail: format!(
                "{} v{} output {:.3}; driven by {}",
                m.kind,
                m.version,
                m.raw,
                if top.is_empty() { "-".into() } else { top.join(", ") }
            ),
        });
    }
    let total_r: f64 = contributions.iter().map(|c| -(1.0 - c.p.min(MAX_P)).ln()).sum();
    let score = if total_r > 0.0 { (1.0 - (-total_r).exp()).clamp(0.0, 1.0) } else { 0.0 };
    for c in &mut contributions {
        c.contribution = if total_r > 0.0 { score * (-(1.0 - c.p.min(MAX_P)).ln()) / total_r } else { 0.0 };
    }
    contributions.sort_by(|a, b| b.contribution.total_cmp(&a.contribution).then_with(|| a.name.cmp(&b.name)));

    let mut level = if score >= th.critical {
        Level::Critical
    } else if score >= th.alert {
        Level::High
    } else if score >= th.medium {
        Level::Medium
    } else {
        Level::Low
    };
    let block_by_score = th.block.is_some_and(|b| score >= b);
    let decision = if (block_rule || block_by_score) && th.enforce_blocks {
        Decision::Block
    } else if block_rule || block_by_score || review_rule || score >= th.alert {
        Decision::Review
    } else {
        Decision::Allow
    };
    // A rule that forces review/block says "a human must see this": route it like an alert.
    if block_rule || block_by_score {
        level = level.max(Level::High);
    } else if review_rule {
        level = level.max(Level::Medium);
    }
    Outcome { score, level, decision, alert: decision == Decision::Review, contributions, allowed_by: None, forced_by }
}

impl Outcome {
    /// The top `n` reasons as stored in `fraud.alerts.reasons`.
    pub fn reasons_json(&self, n: usize) -> Json {
        Json::Array(
            self.contributions
                .iter()
                .take(n)
                .map(|c| json!({"name": c.name, "contribution": round6(c.contribution), "detail": c.detail}))
                .collect(),
        )
    }

    /// The full explanation returned by `fraud_explain`.
    pub fn explain_json(&self, fv: &FeatureVector, models: &[ModelSignal], rules_evaluated: usize) -> Json {
        let mut out = Map::new();
        out.insert("score".into(), json!(round6(self.score)));
        out.insert("level".into(), json!(self.level.as_str()));
        out.insert("action".into(), json!(self.decision.as_str()));
        out.insert("alert".into(), json!(self.alert));
        out.insert(
            "contributions".into(),
            Json::Array(
                self.contributions
                    .iter()
                    .map(|c| {
                        json!({
                            "name": c.name,
                            "source": match c.source { Source::Rule => "rule", Source::Model => "model" },
                            "signal": round6(c.p),
                            "contribution": round6(c.contribution),
                            "detail": c.detail,
                        })
                    })
                    .collect(),
            ),
        );
        out.insert(
            "rules_fired".into(),
            json!(self
                .contributions
                .iter()
                .filter(|c| c.source == Source::Rule)
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()),
        );
        out.insert("rules_evaluated".into(), json!(rules_evaluated));
        out.insert("allowed_by".into(), json!(self.allowed_by));
        out.insert("forced_by".into(), json!(self.forced_by));
        out.insert(
            "models".into(),
            models
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name, "version": m.version, "kind": m.kind,
                        "output": round6(m.raw), "signal": round6(m.p),
                        "top_features": m.top_features.iter().map(|(n, s)| json!({"feature": n, "share": round6(*s)})).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        );
        out.insert("features".into(), Json::Object(fv.to_json()));
        Json::Object(out)
    }
}

/// Rounds for display; exact sums are kept internally.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{f, Value};
    use crate::rules::compile;

    fn rule(name: &str, expr: &str, weight: f64, action: Action) -> RuleSpec {
        RuleSpec { name: name.into(), expression: expr.into(), compiled: compile(expr).unwrap(), weight, action }
    }

    fn fv(amount: f64, km: f64) -> FeatureVector {
        let mut values = vec![Value::Null; f::COUNT];
        values[f::AMOUNT] = Value::Num(amount);
        values[f::KM_FROM_HOME] = Value::Num(km);
        FeatureVector { values }
    }

    fn sum(o: &Outcome) -> f64 {
        o.contributions.iter().map(|c| c.contribution).sum()
    }

    #[test]
    fn noisy_or_and_contributions_add_up() {
        let rules = vec![
            rule("big", "amount > 1000", 0.5, Action::Score),
            rule("far", "km_from_home > 500", 0.4, Action::Score),
            rule("never", "amount < 0", 0.9, Action::Score),
        ];
        let o = decide(&rules, &fv(5000.0, 900.0), &[], &Thresholds::default());
        assert!((o.score - (1.0 - 0.5 * 0.6)).abs() < 1e-12);
        assert!((sum(&o) - o.score).abs() < 1e-12);
        assert_eq!(o.contributions[0].name, "big");
        assert_eq!(o.level, Level::High);
        assert_eq!(o.decision, Decision::Review);
        assert!(o.alert);
        let o = decide(&rules, &fv(5.0, 0.0), &[], &Thresholds::default());
        assert_eq!((o.score, o.level, o.decision, o.alert), (0.0, Level::Low, Decision::Allow, false));
        assert!(o.contributions.is_empty());
    }

    #[test]
    fn graded_rules_and_the_model() {
        let rules = vec![rule("z", "clamp((amount - 100) / 100, 0, 1)", 0.6, Action::Score)];
        let model = ModelSignal {
            name: "iforest".into(),
            version: 3,
            kind: "isolation_forest".into(),
            raw: 0.8,
            p: 0.3,
            top_features: vec![("amount".into(), 0.7)],
        };
        let o = decide(&rules, &fv(150.0, 0.0), std::slice::from_ref(&model), &Thresholds::default());
        let expected = 1.0 - (1.0 - 0.3) * (1.0 - 0.3);
        assert!((o.score - expected).abs() < 1e-12, "{}", o.score);
        assert!((sum(&o) - o.score).abs() < 1e-12);
        assert!(o.contributions.iter().any(|c| c.name == "model:iforest" && c.detail.contains("amount 70%")));
        assert_eq!(o.level, Level::Medium);
    }

    #[test]
    fn certain_signals_stay_finite() {
        let rules = vec![
            rule("a", "amount > 1", 1.0, Action::Score),
            rule("b", "amount > 1", 1.0, Action::Score),
            rule("c", "amount > 1", 0.2, Action::Score),
        ];
        let o = decide(&rules, &fv(5.0, 0.0), &[], &Thresholds::default());
        assert!(o.score <= 1.0 && o.score > 0.999_999);
        assert!((sum(&o) - o.score).abs() < 1e-9);
        assert!(o.contributions.iter().all(|c| c.contribution.is_finite()));
        assert_eq!(o.level, Level::Critical);
    }

    #[test]
    fn allow_wins_over_everything() {
        let rules =
            vec![rule("block_big", "amount > 1000", 1.0, Action::Block), rule("vip", "amount > 0", 1.0, Action::Allow)];
        let o = decide(&rules, &fv(5000.0, 0.0), &[], &Thresholds { block: Some(0.5), ..Default::default() });
        assert_eq!((o.score, o.decision, o.alert), (0.0, Decision::Allow, false));
        assert_eq!(o.allowed_by.as_deref(), Some("vip"));
    }

    #[test]
    fn review_block_and_shadow_mode() {
        let rules = vec![rule("check", "amount > 100", 0.1, Action::Review)];
        let o = decide(&rules, &fv(500.0, 0.0), &[], &Thresholds::default());
        assert_eq!((o.decision, o.alert, o.level), (Decision::Review, true, Level::Medium));
        assert_eq!(o.forced_by, vec!["check".to_string()]);

        let rules = vec![rule("stop", "amount > 100", 0.2, Action::Block)];
        let o = decide(&rules, &fv(500.0, 0.0), &[], &Thresholds::default());
        assert_eq!((o.decision, o.alert, o.level), (Decision::Block, false, Level::High));
        let shadow = Thresholds { enforce_blocks: false, ..Default::default() };
        let o = decide(&rules, &fv(500.0, 0.0), &[], &shadow);
        assert_eq!((o.decision, o.alert), (Decision::Review, true), "shadow mode alerts instead");

        let rules = vec![rule("big", "amount > 100", 0.95, Action::Score)];
        let th = Thresholds { block: Some(0.9), ..Default::default() };
        assert_eq!(decide(&rules, &fv(500.0, 0.0), &[], &th).decision, Decision::Block);
        assert_eq!(decide(&rules, &fv(500.0, 0.0), &[], &Thresholds::default()).decision, Decision::Review);
    }

    #[test]
    fn explanation_shape() {
        let rules = vec![rule("big", "amount > 1000", 0.8, Action::Score)];
        let v = fv(5000.0, 1.0);
        let o = decide(&rules, &v, &[], &Thresholds::default());
        let j = o.explain_json(&v, &[], 1);
        assert_eq!(j["level"], "high");
        assert_eq!(j["rules_fired"][0], "big");
        assert_eq!(j["features"]["amount"], 5000.0);
        assert!(j["features"]["tx_count_1h"].is_null());
        assert_eq!(j["models"], json!([]));
        let total: f64 =
            j["contributions"].as_array().unwrap().iter().map(|c| c["contribution"].as_f64().unwrap()).sum();
        assert!((total - j["score"].as_f64().unwrap()).abs() < 1e-5);
        let r = o.reasons_json(5);
        assert_eq!(r[0]["name"], "big");
        assert_eq!(r[0]["detail"], "amount > 1000");
    }
}
