//! Profile state: read from `fraud.profile_shards`, updated in memory while a statement
//! inserts, and written back once per statement.
//!
//! Why not `UPDATE fraud.profiles` per row: a bulk insert would update the same row
//! thousands of times in one transaction (each update a new tuple version the next has to
//! walk past), and concurrent inserts for one merchant would queue on its row lock for the
//! length of every commit. Instead each statement keeps the touched keys' states in backend
//! memory and, when the statement ends, upserts one *delta* per key into this backend's own
//! shard row (`shard = backend id % pg_fraud.write_shards`). Readers merge the shard rows.
//! Everything is ordinary MVCC: a rolled-back statement or transaction leaves no trace, a
//! restart loses nothing, and two connections inserting for one entity write different rows.
//!
//! Deltas are kept per subtransaction, so `ROLLBACK TO SAVEPOINT` (or a PL/pgSQL exception
//! block) drops exactly the events recorded inside it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;

use pgrx::pg_sys::{self, Oid, SubTransactionId};
use pgrx::spi::{OwnedPreparedStatement, Spi, SpiClient};
use pgrx::PgOid;

use fraud_core::state::{Kind, State, StateView};

use crate::error::{FraudError, Result};
use crate::gucs;

/// A key in the pending map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId {
    /// `fraud.watches.id`.
    pub watch: i32,
    /// Key kind.
    pub kind: Kind,
    /// The key's text.
    pub key: String,
}

/// A borrowed [`KeyId`], so the per-row lookups allocate nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// `fraud.watches.id`.
    pub watch: i32,
    /// Key kind.
    pub kind: Kind,
    /// The key's text.
    pub key: &'a str,
}

impl KeyRef<'_> {
    /// The owned form.
    pub fn to_owned(self) -> KeyId {
        KeyId { watch: self.watch, kind: self.kind, key: self.key.to_string() }
    }
}

impl KeyId {
    /// The borrowed form.
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef { watch: self.watch, kind: self.kind, key: &self.key }
    }
}

// KeyId and KeyRef hash identically (required by `Equivalent`).
impl Hash for KeyId {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_ref().hash(h)
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.watch.hash(h);
        (self.kind as u8).hash(h);
        self.key.hash(h);
    }
}

impl Equivalent<KeyId> for KeyRef<'_> {
    fn equivalent(&self, k: &KeyId) -> bool {
        self.watch == k.watch && self.kind == k.kind && self.key == k.key
    }
}

/// A pending entry: the committed state as read, and what this statement added. Features
/// read both through a [`StateView`] rather than a merged copy, so each event is recorded
/// once and the big parts are never duplicated.
#[derive(Default)]
struct Entry {
    /// Committed state; `None` until read (or after a subtransaction abort, re-read lazily).
    base: Option<State>,
    /// Events recorded by this backend and not yet written, per open subtransaction level
    /// (a released subtransaction's delta is folded into its parent's).
    deltas: Vec<(SubTransactionId, State)>,
}

#[derive(Default)]
struct Pending {
    entries: hashbrown::HashMap<KeyId, Entry>,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
    static PLANS: RefCell<HashMap<&'static str, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

const READ_SQL: &str = "SELECT state FROM fraud.profile_shards \
     WHERE watch_id OPERATOR(pg_catalog.=) $1 AND kind OPERATOR(pg_catalog.=) $2 AND key OPERATOR(pg_catalog.=) $3";

const FLUSH_SQL: &str = "INSERT INTO fraud.profile_shards AS p (watch_id, kind, key, shard, state) \
     SELECT d.watch_id, d.kind, d.key, $1, d.state \
       FROM unnest($2::pg_catalog.int4[], $3::pg_catalog.text[], $4::pg_catalog.text[], $5::pg_catalog.bytea[]) AS d(watch_id, kind, key, state) \
     ON CONFLICT (watch_id, kind, key, shard) DO UPDATE SET state = fraud._merge_state(p.state, excluded.state)";

/// Runs a cached prepared statement (prepared on first use in this backend). Statements that
/// write are prepared "mutating", so executing them takes a fresh snapshot and bumps the
/// command counter like any data-modifying SPI call.
pub fn with_plan<T>(
    client: &SpiClient<'_>,
    sql: &'static str,
    types: &[Oid],
    f: impl FnOnce(&OwnedPreparedStatement) -> Result<T>,
) -> Result<T> {
    let missing = PLANS.with(|p| !p.borrow().contains_key(sql));
    if missing {
        let oids: Vec<PgOid> = types.iter().map(|&o| PgOid::from(o)).collect();
        let plan = client.prepare_mut(sql, &oids)?.keep();
        PLANS.with(|p| p.borrow_mut().insert(sql, plan));
    }
    PLANS.with(|p| {
        let plans = p.borrow();
        f(plans.get(sql).expect("plan was just prepared"))
    })
}

/// Reads and merges the committed shards of one key (plus this transaction's earlier writes).
pub fn read_committed(client: &SpiClient<'_>, id: KeyRef<'_>) -> Result<State> {
    with_plan(client, READ_SQL, &[pg_sys::INT4OID, pg_sys::TEXTOID, pg_sys::TEXTOID], |plan| {
        let rows = client.select(plan, None, &[id.watch.into(), id.kind.as_str().into(), id.key.into()])?;
        let mut merged = State::default();
        for row in rows {
            if let Some(bytes) = row.get::<&[u8]>(1)? {
                let s = State::decode(bytes).map_err(|source| FraudError::CorruptState {
                    kind: id.kind.as_str(),
                    key: id.key.to_string(),
                    source,
                })?;
                merged.merge(&s);
            }
        }
        Ok(merged)
    })
}

fn entry_mut<'m>(entries: &'m mut hashbrown::HashMap<KeyId, Entry>, id: KeyRef<'_>) -> &'m mut Entry {
    if !entries.contains_key(&id) {
        entries.insert(id.to_owned(), Entry::default());
    }
    entries.get_mut(&id).expect("entry was just inserted")
}

/// Whether any of `ids` lacks a current state (so the caller must open SPI and [`load`]).
pub fn needs_load(ids: &[Option<KeyRef<'_>>; 4]) -> bool {
    PENDING.with(|p| {
        let p = p.borrow();
        ids.iter().flatten().any(|id| p.entries.get(id).is_none_or(|e| e.base.is_none()))
    })
}

/// Reads the committed state of every key of `ids` not read yet in this statement.
pub fn load(client: &SpiClient<'_>, ids: &[Option<KeyRef<'_>>; 4]) -> Result<()> {
    // One simple primary-key query per key. A single query for all four (unnest joined to
    // the table) was measured no faster, and its cached generic plan, made while the table
    // was small, kept sequentially scanning it as it grew.
    for &id in ids.iter().flatten() {
        let needs = PENDING.with(|p| p.borrow().entries.get(&id).is_none_or(|e| e.base.is_none()));
        if !needs {
            continue;
        }
        let state = read_committed(client, id)?;
        PENDING.with(|p| entry_mut(&mut p.borrow_mut().entries, id).base = Some(state));
    }
    Ok(())
}

/// Calls `f` with views of `ids`' states (committed + unwritten), `None` where absent.
pub fn with_states<T>(ids: &[Option<KeyRef<'_>>; 4], f: impl FnOnce([Option<StateView<'_>>; 4]) -> T) -> T {
    PENDING.with(|p| {
        let p = p.borrow();
        let entries: [Option<&Entry>; 4] = std::array::from_fn(|i| ids[i].and_then(|id| p.entries.get(&id)));
        // Several deltas only exist inside nested, still-open subtransactions: merge a copy.
        let merged: [Option<State>; 4] = std::array::from_fn(|i| {
            entries[i].filter(|e| e.deltas.len() > 1).map(|e| {
                let mut m = State::default();
                e.deltas.iter().for_each(|(_, d)| m.merge(d));
                m
            })
        });
        let views: [Option<StateView<'_>>; 4] = std::array::from_fn(|i| {
            let e = entries[i]?;
            let base = e.base.as_ref()?;
            Some(match (&merged[i], e.deltas.first()) {
                (Some(m), _) => StateView::two(base, m),
                (None, Some((_, d))) => StateView::two(base, d),
                (None, None) => StateView::one(base),
            })
        });
        f(views)
    })
}

/// Records into this subtransaction's delta of a key.
pub fn update(id: KeyRef<'_>, update: impl FnOnce(&mut State)) {
    // SAFETY: reads the current subtransaction id; always valid inside a transaction.
    let subxid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let entry = entry_mut(&mut p.entries, id);
        match entry.deltas.last_mut() {
            Some((s, delta)) if *s == subxid => update(delta),
            _ => {
                let mut delta = State::default();
                update(&mut delta);
                entry.deltas.push((subxid, delta));
            }
        }
    });
}

/// Folds the deltas of a released subtransaction into its parent's.
pub fn on_subxact_commit(subxid: SubTransactionId, parent: SubTransactionId) {
    PENDING.with(|p| {
        for e in p.borrow_mut().entries.values_mut() {
            if e.deltas.last().is_some_and(|(s, _)| *s == subxid) {
                let (_, child) = e.deltas.pop().expect("checked above");
                match e.deltas.last_mut() {
                    Some((s, d)) if *s == parent => d.merge(&child),
                    _ => e.deltas.push((parent, child)),
                }
            }
        }
    });
}

/// Whether any delta waits to be written.
pub fn has_pending() -> bool {
    PENDING.with(|p| p.borrow().entries.values().any(|e| !e.deltas.is_empty()))
}

/// This backend's shard number.
fn my_shard() -> i16 {
    let shards = gucs::WRITE_SHARDS.get().max(1);
    // SAFETY: reading a backend-global integer set at backend start.
    let backend: i32 = unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
        {
            pg_sys::MyBackendId
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            pg_sys::MyProcNumber
        }
    };
    (backend.rem_euclid(shards)) as i16
}

// Multi-argument `unnest` must be written unqualified (it is FROM-clause syntax); the parser
// rewrites it to calls of `pg_catalog.unnest`, so the search path cannot redirect it.

/// Writes every pending delta (one upsert for all keys) and forgets the statement's states.
///
/// Keys are written in sorted order so two backends flushing overlapping keys into the same
/// shard lock them in the same order and cannot deadlock.
pub fn flush(client: &SpiClient<'_>, owner: Oid) -> Result<usize> {
    let mut batch: Vec<(KeyId, State)> = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        p.entries
            .drain()
            .filter_map(|(id, e)| {
                let mut it = e.deltas.into_iter();
                let (_, mut merged) = it.next()?;
                for (_, d) in it {
                    merged.merge(&d);
                }
                Some((id, merged))
            })
            .collect()
    });
    if batch.is_empty() {
        return Ok(0);
    }
    batch.sort_by(|a, b| a.0.cmp(&b.0));
    let n = batch.len();
    let watch: Vec<i32> = batch.iter().map(|(id, _)| id.watch).collect();
    let kind: Vec<&str> = batch.iter().map(|(id, _)| id.kind.as_str()).collect();
    let key: Vec<&str> = batch.iter().map(|(id, _)| id.key.as_str()).collect();
    let state: Vec<Vec<u8>> = batch.iter().map(|(_, s)| s.encode()).collect();
    crate::catalog::as_owner(owner, || {
        with_plan(
            client,
            FLUSH_SQL,
            &[pg_sys::INT2OID, pg_sys::INT4ARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::BYTEAARRAYOID],
            |plan| {
                client.select(plan, None, &[my_shard().into(), watch.into(), kind.into(), key.into(), state.into()])?;
                Ok(())
            },
        )
    })?;
    Ok(n)
}

/// Drops the deltas recorded inside an aborted subtransaction (and its children).
pub fn on_subxact_abort(subxid: SubTransactionId) {
    PENDING.with(|p| {
        for e in p.borrow_mut().entries.values_mut() {
            e.deltas.retain(|(s, _)| *s < subxid);
        }
    });
}

/// Forgets everything pending (transaction end).
pub fn clear() {
    PENDING.with(|p| p.borrow_mut().entries.clear());
}

/// Reads one key's merged state for a SQL function, including this statement's unwritten
/// events.
pub fn read_for_query(id: &KeyId) -> Result<State> {
    let cfg = crate::catalog::config()?;
    let mut state = crate::catalog::as_owner(cfg.owner, || Spi::connect(|client| read_committed(client, id.as_ref())))?;
    PENDING.with(|p| {
        if let Some(e) = p.borrow().entries.get(id) {
            for (_, d) in &e.deltas {
                state.merge(d);
            }
        }
    });
    Ok(state)
}

/// The statement a query cache belongs to: (transaction start, statement start, command id).
type StatementId = (i64, i64, u32);

thread_local! {
    /// States read by SQL functions, valid for one statement (one snapshot).
    static QUERY_CACHE: RefCell<(Option<StatementId>, HashMap<KeyId, State>)> = RefCell::new((None, HashMap::new()));
}

/// Upper bound on keys cached for one query statement, so a huge `SELECT fraud_score(t)`
/// over millions of distinct entities cannot grow the backend without bound.
const QUERY_CACHE_MAX: usize = 100_000;

fn statement_stamp() -> (i64, i64, u32) {
    // SAFETY: plain reads of transaction-local timestamps and the command counter.
    unsafe {
        (
            pg_sys::GetCurrentTransactionStartTimestamp(),
            pg_sys::GetCurrentStatementStartTimestamp(),
            pg_sys::GetCurrentCommandId(false),
        )
    }
}

/// Like [`read_for_query`], cached for the rest of the statement: scoring a whole table
/// reads each entity's profile once.
pub fn read_cached(id: &KeyId) -> Result<State> {
    let stamp = statement_stamp();
    let hit = QUERY_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != Some(stamp) {
            c.0 = Some(stamp);
            c.1.clear();
        }
        c.1.get(id).cloned()
    });
    if let Some(s) = hit {
        return Ok(s);
    }
    let s = read_for_query(id)?;
    QUERY_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.1.len() >= QUERY_CACHE_MAX {
            c.1.clear();
        }
        c.1.insert(id.clone(), s.clone());
    });
    Ok(s)
}

/// Keys with unwritten deltas.
pub fn pending_keys() -> usize {
    PENDING.with(|p| p.borrow().entries.len())
}
