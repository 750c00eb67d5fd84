//! The delivery loop: one worker per channel claims due deliveries, groups them, sends them
//! concurrently through the channel's [`Channel`] (rate limit, `Retry-After` gate) and hands
//! the outcomes to a single recorder that writes them back in batches.
//!
//! Why one worker per channel rather than one claim for all channels: a channel limited to
//! one message a second must not claim more than it can send before its lease runs out, or
//! another alerter would take the rows over and send them a second time. Each worker
//! therefore claims at most `claim_cap` rows (bounded by its concurrency × send timeout and
//! its rate limit over half a lease) and keeps at most twice that unrecorded.
//!
//! The worker knows nothing about Slack or SMTP; it sees `send` and a [`SendError`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::alert::{Level, Notification};
use crate::backoff::Backoff;
use crate::channel::{Channel, SendError};
use crate::config::{ChannelConfig, DeliveryConfig, GroupPolicy, RetryPolicy};
use crate::db::{Claimed, Database, RowUpdate, Status};
use crate::metrics::Metrics;

/// What to do with a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// Give up.
    Dead,
}

/// Shortest retry delay, even when a receiver says `Retry-After: 0`: a tight loop against a
/// struggling receiver helps nobody.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// The retry rule. `attempts` counts this attempt.
pub fn decide(policy: &RetryPolicy, attempts: u32, err: &SendError) -> Decision {
    if !err.retryable && attempts >= policy.permanent_failure_attempts {
        return Decision::Dead;
    }
    if attempts >= policy.max_attempts {
        return Decision::Dead;
    }
    let delay = match err.retry_after {
        Some(after) => after.max(MIN_RETRY),
        None => policy.backoff.delay(attempts).max(MIN_RETRY),
    };
    Decision::Retry(delay)
}

/// Splits claimed deliveries into messages: one per delivery, or — when grouping is on —
/// one per run of same-entity alerts created within `window` of the run's first alert, at
/// most `max` per message. Messages come out oldest first.
pub fn group(rows: Vec<Claimed>, policy: &GroupPolicy) -> Vec<Vec<Claimed>> {
    if policy.window.is_zero() || policy.max <= 1 {
        return rows.into_iter().map(|r| vec![r]).collect();
    }
    let mut by_entity: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
    for r in rows {
        by_entity.entry(r.alert.entity.clone()).or_default().push(r);
    }
    let window = chrono::Duration::from_std(policy.window).unwrap_or(chrono::Duration::MAX);
    let mut groups: Vec<Vec<Claimed>> = Vec::new();
    for (_, mut list) in by_entity {
        list.sort_by_key(|r| (r.alert.created_at, r.alert.id));
        let mut current: Vec<Claimed> = Vec::new();
        for r in list {
            let fits = current.first().is_some_and(|first| {
                r.alert.created_at - first.alert.created_at <= window && current.len() < policy.max
            });
            if !fits && !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            current.push(r);
        }
        if !current.is_empty() {
            groups.push(current);
        }
    }
    groups.sort_by_key(|g| g.first().map(|r| (r.alert.created_at, r.alert.id)));
    groups
}

/// "No request to this channel before …", set from `Retry-After`.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    until: Mutex<Option<Instant>>,
}

impl Gate {
    /// Closes the gate for `d` (never shortens an existing closure).
    pub fn close_for(&self, d: Duration) {
        let t = Instant::now() + d;
        let mut g = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|u| u < t) {
            *g = Some(t);
        }
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        loop {
            let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }
}

/// Outcomes of one message plus the in-flight capacity they hold until written.
pub(crate) struct Outcome {
    pub updates: Vec<RowUpdate>,
    pub _permit: OwnedSemaphorePermit,
}

/// What every worker shares.
pub(crate) struct Engine {
    pub db: Database,
    pub metrics: Arc<Metrics>,
    pub delivery: DeliveryConfig,
    pub recorder: mpsc::UnboundedSender<Outcome>,
    /// Backoff after a failed claim query (database trouble).
    pub db_backoff: Backoff,
}

/// One channel's worker.
pub(crate) struct Worker {
    pub name: String,
    min_level: Level,
    group: GroupPolicy,
    retry: RetryPolicy,
    channel: Arc<dyn Channel>,
    pub wake: Arc<Notify>,
    inflight: Arc<Semaphore>,
    sends: Arc<Semaphore>,
    limiter: Option<DefaultDirectRateLimiter>,
    gate: Gate,
    claim_cap: usize,
}

impl Worker {
    pub fn new(cfg: &ChannelConfig, channel: Arc<dyn Channel>, delivery: &DeliveryConfig) -> Worker {
        let half_lease = delivery.lease.as_secs_f64() / 2.0;
        let rounds = (half_lease / delivery.send_timeout.as_secs_f64()).floor().max(1.0);
        let by_time = (cfg.concurrency as f64 * rounds) as usize;
        let by_rate =
            cfg.rate_limit.map(|r| (r.burst as f64 + r.per_second * half_lease) as usize).unwrap_or(usize::MAX);
        let claim_cap = delivery.batch_size.min(by_time).min(by_rate).max(1);
        let limiter = cfg.rate_limit.and_then(|r| {
            let period = Duration::from_secs_f64(1.0 / r.per_second);
            let burst = std::num::NonZeroU32::new(r.burst.max(1))?;
            Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
        });
        Worker {
            name: cfg.name.clone(),
            min_level: cfg.min_level,
            group: cfg.group,
            retry: cfg.retry,
            channel,
            wake: Arc::new(Notify::new()),
            inflight: Arc::new(Semaphore::new(claim_cap * 2)),
            sends: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            limiter,
            gate: Gate::default(),
            claim_cap,
        }
    }

    /// Waits for `may_claim`, then claims and dispatches until `stop`; then lets in-flight sends finish within the
    /// shutdown grace period (sends not yet started give up at once: their claims are
    /// released by the caller).
    pub async fn run(
        self: Arc<Self>,
        engine: Arc<Engine>,
        mut may_claim: watch::Receiver<bool>,
        stop: CancellationToken,
    ) {
        tokio::select! {
            _ = may_claim.wait_for(|ok| *ok) => {}
            _ = stop.cancelled() => return,
        }
        let mut tasks = JoinSet::new();
        let poll = engine.delivery.poll_interval;
        let mut db_errors = 0u32;
        debug!(channel = %self.name, claim_cap = self.claim_cap, "worker started");
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    if e.is_panic() {
                        error!(channel = %self.name, "a send task panicked; its claims return when the lease expires");
                    }
                }
            }
            tokio::select! {
                _ = self.gate.wait() => {}
                _ = stop.cancelled() => break,
            }
            let free = self.inflight.available_permits().min(self.claim_cap);
            if free == 0 {
                tokio::select! {
                    p = self.inflight.clone().acquire_owned() => drop(p),
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            let capacity = crate::db::claim_size(free, self.claim_cap);
            let claimed = tokio::select! {
                c = engine.db.claim(&self.name, capacity, engine.delivery.lease, self.group.wait) => c,
                _ = stop.cancelled() => break,
            };
            let wait = match claimed {
                Ok(rows) => {
                    if db_errors > 0 {
                        info!(channel = %self.name, "claiming works again");
                    }
                    db_errors = 0;
                    let n = rows.len();
                    if n > 0 {
                        self.dispatch(rows, &engine, &stop, &mut tasks).await;
                    }
                    if n == capacity {
                        continue; // probably more due right now
                    }
                    match engine.db.next_due(&self.name, self.group.wait).await {
                        // Zero means something is due but was not claimable (locked by
                        // another alerter's claim in progress): look again shortly.
                        Ok(Some(d)) => d.clamp(Duration::from_millis(20), poll),
                        Ok(None) => poll,
                        Err(_) => poll,
                    }
                }
                Err(e) => {
                    db_errors += 1;
                    if db_errors == 1 {
                        warn!(channel = %self.name, error = %e, "claiming deliveries failed; will retry");
                    } else {
                        debug!(channel = %self.name, error = %e, "claiming deliveries failed again");
                    }
                    engine.db_backoff.delay(db_errors).min(poll)
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
        let grace = engine.delivery.shutdown_grace;
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(channel = %self.name, unfinished = tasks.len(), ?grace, "shutdown grace elapsed; abandoning sends still running (their claims are released)");
            tasks.shutdown().await;
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        rows: Vec<Claimed>,
        engine: &Arc<Engine>,
        stop: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        let n = rows.len() as u32;
        // Only this worker takes permits and it checked availability before claiming, so
        // this does not wait in practice.
        let mut permit = match self.inflight.clone().acquire_many_owned(n).await {
            Ok(p) => p,
            Err(_) => return, // semaphore closed: never happens, we never close it
        };
        let (wanted, below): (Vec<Claimed>, Vec<Claimed>) =
            rows.into_iter().partition(|r| r.alert.level >= self.min_level);
        if !below.is_empty() {
            // The database routes by channels.min_level; this only happens when min_level
            // was raised while deliveries were queued. Park them with the reason.
            let label = Metrics::channel(&self.name);
            engine.metrics.skipped.get_or_create(&label).inc_by(below.len() as u64);
            let updates = below
                .iter()
                .map(|r| RowUpdate {
                    alert_id: r.alert.id,
                    channel: self.name.clone(),
                    status: Status::Dead,
                    retry_in: Duration::ZERO,
                    error: Some(format!(
                        "not sent: level {} is below this channel's min_level {}",
                        r.alert.level, self.min_level
                    )),
                })
                .collect();
            if let Some(p) = permit.split(below.len()) {
                let _ = engine.recorder.send(Outcome { updates, _permit: p });
            }
        }
        for g in group(wanted, &self.group) {
            let Some(p) = permit.split(g.len()) else {
                break;
            };
            let worker = Arc::clone(self);
            let engine = Arc::clone(engine);
            let stop = stop.clone();
            tasks.spawn(async move { worker.deliver(engine, g, p, stop).await });
        }
    }

    async fn deliver(
        self: Arc<Self>,
        engine: Arc<Engine>,
        rows: Vec<Claimed>,
        permit: OwnedSemaphorePermit,
        stop: CancellationToken,
    ) {
        let Some(msg) = Notification::new(rows.iter().map(|r| r.alert.clone()).collect()) else {
            return;
        };
        let span = tracing::info_span!(
            "delivery",
            alert_id = msg.primary().id,
            channel = %self.name,
            alerts = msg.count()
        );
        async move {
            // Until the request starts, shutdown wins: the claim is released rather than
            // sent late.
            let slot = tokio::select! {
                s = self.sends.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                _ = stop.cancelled() => return,
            };
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    _ = limiter.until_ready() => {}
                    _ = stop.cancelled() => return,
                }
            }
            tokio::select! {
                _ = self.gate.wait() => {}
                _ = stop.cancelled() => return,
            }
            let timeout = engine.delivery.send_timeout;
            let result = match tokio::time::timeout(timeout, self.channel.send(&msg)).await {
                Ok(r) => r,
                Err(_) => Err(SendError::retryable(format!("timed out after {}s", timeout.as_secs_f64()))),
            };
            drop(slot);
            let updates = self.outcome(&engine, &msg, &rows, result);
            if engine.recorder.send(Outcome { updates, _permit: permit }).is_err() {
                warn!("recorder gone; outcome not written (the claim will be released or expire)");
            }
        }
        .instrument(span)
        .await
    }

    fn outcome(
        &self,
        engine: &Engine,
        msg: &Notification,
        rows: &[Claimed],
        result: Result<crate::channel::Delivered, SendError>,
    ) -> Vec<RowUpdate> {
        let label = Metrics::channel(&self.name);
        let m = &engine.metrics;
        let ids = msg.ids_ascending();
        match result {
            Ok(delivered) => {
                m.messages.get_or_create(&label).inc();
                m.delivered.get_or_create(&label).inc_by(rows.len() as u64);
                let hist = m.latency.get_or_create(&label);
                for r in rows {
                    hist.observe((r.age_at_claim + r.claimed_at.elapsed()).as_secs_f64());
                }
                info!(alert_ids = ?ids, detail = %delivered.detail, "delivered");
                rows.iter()
                    .map(|r| RowUpdate {
                        alert_id: r.alert.id,
                        channel: self.name.clone(),
                        status: Status::Delivered,
                        retry_in: Duration::ZERO,
                        error: None,
                    })
                    .collect()
            }
            Err(e) => {
                if let Some(after) = e.retry_after {
                    // No request to this channel before the receiver said so — from any task.
                    self.gate.close_for(after);
                    m.rate_limited.get_or_create(&label).inc();
                }
                let attempts = rows.iter().map(|r| r.attempts).max().unwrap_or(1);
                let mut updates = Vec::with_capacity(rows.len());
                let (mut retried, mut dead) = (0u64, 0u64);
                let mut first_delay = None;
                for r in rows {
                    let (status, retry_in) = match decide(&self.retry, r.attempts, &e) {
                        Decision::Retry(d) => {
                            retried += 1;
                            first_delay.get_or_insert(d);
                            (Status::Failed, d)
                        }
                        Decision::Dead => {
                            dead += 1;
                            (Status::Dead, Duration::ZERO)
                        }
                    };
                    updates.push(RowUpdate {
                        alert_id: r.alert.id,
                        channel: self.name.clone(),
                        status,
                        retry_in,
                        error: Some(format!("attempt {}: {}", r.attempts, e)),
                    });
                }
                if retried > 0 {
                    m.failed.get_or_create(&label).inc_by(retried);
                    warn!(alert_ids = ?ids, attempts, error = %e, retry_in = ?first_delay.unwrap_or_default(), "delivery failed; will retry");
                }
                if dead > 0 {
                    m.dead.get_or_create(&label).inc_by(dead);
                    error!(alert_ids = ?ids, attempts, error = %e, permanent = !e.retryable, "delivery dead; giving up");
                }
                updates
            }
        }
    }
}

/// Writes outcomes in batches until every sender is gone (or `hard_stop` fires while the
/// database is unreachable). Retries failed writes: an outcome not written means a resend
/// after the lease, which is allowed but not wanted.
pub(crate) async fn record(
    db: Database,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    hard_stop: CancellationToken,
    backoff: Backoff,
) {
    let mut buf: Vec<Outcome> = Vec::new();
    while rx.recv_many(&mut buf, 1024).await > 0 {
        let updates: Vec<RowUpdate> = buf.iter_mut().flat_map(|o| std::mem::take(&mut o.updates)).collect();
        let mut failures = 0u32;
        loop {
            match db.record(&updates).await {
                Ok(n) => {
                    if (n as usize) < updates.len() {
                        // The claim expired and another alerter took the row over.
                        debug!(
                            written = n,
                            outcomes = updates.len(),
                            "some outcomes were for claims we no longer hold"
                        );
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if hard_stop.is_cancelled() {
                        error!(error = %e, outcomes = updates.len(), "giving up writing delivery outcomes at shutdown; those deliveries may be sent again");
                        break;
                    }
                    let delay = backoff.delay(failures).min(Duration::from_secs(5));
                    if failures == 1 {
                        warn!(error = %e, outcomes = updates.len(), "writing delivery outcomes failed; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = hard_stop.cancelled() => {}
                    }
                }
            }
        }
        // Dropping the outcomes releases their in-flight capacity to the workers.
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Alert;
    use chrono::{TimeZone, Utc};
    use std::time::Instant as StdInstant;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            permanent_failure_attempts: 1,
            backoff: Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60), factor: 2.0, jitter: 0.0 },
        }
    }

    #[test]
    fn retry_decisions() {
        let p = policy();
        let flaky = SendError::retryable("HTTP 500");
        assert_eq!(decide(&p, 1, &flaky), Decision::Retry(Duration::from_secs(1)));
        assert_eq!(decide(&p, 3, &flaky), Decision::Retry(Duration::from_secs(4)));
        assert_eq!(decide(&p, 5, &flaky), Decision::Dead);
        let slow = SendError::retryable("HTTP 429").with_retry_after(Some(Duration::from_secs(2)));
        assert_eq!(decide(&p, 1, &slow), Decision::Retry(Duration::from_secs(2)));
        let zero = SendError::retryable("HTTP 429").with_retry_after(Some(Duration::ZERO));
        assert_eq!(decide(&p, 1, &zero), Decision::Retry(MIN_RETRY));
        let bad = SendError::permanent("HTTP 400");
        assert_eq!(decide(&p, 1, &bad), Decision::Dead);
        let lenient = RetryPolicy { permanent_failure_attempts: 3, ..p };
        assert!(matches!(decide(&lenient, 2, &bad), Decision::Retry(_)));
        assert_eq!(decide(&lenient, 3, &bad), Decision::Dead);
    }

    fn claimed(id: i64, entity: &str, secs: i64) -> Claimed {
        Claimed {
            alert: Alert {
                id,
                entity: entity.into(),
                created_at: Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
                ..Alert::synthetic()
            },
            attempts: 1,
            age_at_claim: Duration::ZERO,
            claimed_at: StdInstant::now(),
        }
    }

    fn ids(groups: &[Vec<Claimed>]) -> Vec<Vec<i64>> {
        groups.iter().map(|g| g.iter().map(|c| c.alert.id).collect()).collect()
    }

    #[test]
    fn grouping_by_entity_and_window() {
        let rows =
            vec![claimed(1, "a", 0), claimed(2, "b", 1), claimed(3, "a", 10), claimed(4, "a", 70), claimed(5, "a", 71)];
        let off = GroupPolicy { window: Duration::ZERO, wait: Duration::ZERO, max: 50 };
        assert_eq!(ids(&group(rows.clone(), &off)), vec![vec![1], vec![2], vec![3], vec![4], vec![5]]);
        let minute = GroupPolicy { window: Duration::from_secs(60), ..off };
        assert_eq!(ids(&group(rows.clone(), &minute)), vec![vec![1, 3], vec![2], vec![4, 5]]);
        let small = GroupPolicy { max: 1, ..minute };
        assert_eq!(group(rows.clone(), &small).len(), 5);
        let two = GroupPolicy { max: 2, ..minute };
        let rows = vec![claimed(1, "a", 0), claimed(2, "a", 1), claimed(3, "a", 2)];
        assert_eq!(ids(&group(rows, &two)), vec![vec![1, 2], vec![3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_holds_until_retry_after() {
        let gate = Gate::default();
        let start = Instant::now();
        gate.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        gate.close_for(Duration::from_secs(2));
        gate.close_for(Duration::from_secs(1)); // never shortens
        gate.wait().await;
        assert!(start.elapsed() >= Duration::from_secs(2));
    }
}
