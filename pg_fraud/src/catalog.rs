//! Backend-local view of the configuration: watched tables with their resolved columns, and
//! compiled rules. Built on first use and rebuilt after an invalidation.
//!
//! Invalidation rides on Postgres' relcache: a change to `fraud.watches`, `fraud.rules` or
//! `fraud.models` (a deploy) calls `CacheInvalidateRelcacheByRelid(fraud.watches)` from a statement
//! trigger, which Postgres broadcasts to every backend *at commit*; our relcache callback
//! bumps a generation counter and the next row rebuilds. An `ALTER TABLE` on a watched table
//! invalidates it the same way. No shared memory, no polling, and a rolled-back change
//! invalidates nothing. The callback only bumps a counter, so it is safe wherever Postgres
//! calls it; backends are single-threaded, so the thread-locals need no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::{self, Oid};
use pgrx::spi::Spi;
use pgrx::{pg_guard, PgRelation};

use fraud_core::rules;
use fraud_core::score::{Action, RuleSpec};

use crate::error::{FraudError, Result};

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(1) };
    static WATCHES_RELID: Cell<Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static WATCHED_RELIDS: RefCell<Vec<Oid>> = const { RefCell::new(Vec::new()) };
    static CONFIG: RefCell<Option<(u64, Rc<Config>)>> = const { RefCell::new(None) };
}

/// Current configuration generation (bumped by invalidations).
pub fn generation() -> u64 {
    GENERATION.with(Cell::get)
}

/// Forgets everything cached in this backend.
pub fn invalidate() {
    GENERATION.with(|g| g.set(g.get() + 1));
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: Oid) {
    let ours = relid == pg_sys::InvalidOid
        || relid == WATCHES_RELID.with(Cell::get)
        || WATCHED_RELIDS.with(|w| w.borrow().contains(&relid));
    if ours {
        invalidate();
    }
}

/// Registers the relcache callback; called once from `_PG_init`.
pub fn init() {
    // SAFETY: registering a callback with a static function pointer; Postgres keeps it for
    // the life of the backend.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0)) };
}

/// How to turn a column's datum into what the scoring needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// text, varchar, bpchar, name
    Text,
    /// int2
    Int2,
    /// int4
    Int4,
    /// int8
    Int8,
    /// float4
    Float4,
    /// float8
    Float8,
    /// numeric
    Numeric,
    /// timestamptz
    Timestamptz,
    /// timestamp (read as UTC)
    Timestamp,
    /// date (midnight UTC)
    Date,
    /// boolean
    Bool,
    /// jsonb
    Jsonb,
    /// any other type, rendered with its output function (uuid, inet, enums...)
    Output,
}

/// A mapped column, resolved against the table.
#[derive(Clone, Debug)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// 1-based attribute number.
    pub attnum: i16,
    /// Its type.
    pub typoid: Oid,
    /// How to read it.
    pub conv: Conv,
}

/// What a role accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Keys: entity, merchant, device, ip, country, row key.
    Key,
    /// Amount.
    Amount,
    /// Timestamp.
    Time,
    /// Coordinates.
    Coordinate,
    /// Card-present flag or channel label.
    Channel,
    /// Output: score.
    OutScore,
    /// Output: level.
    OutLevel,
    /// Output: reasons.
    OutReasons,
}

impl Role {
    fn accepts(self, conv: Conv) -> bool {
        use Conv::*;
        match self {
            Role::Key => !matches!(conv, Jsonb),
            Role::Amount | Role::Coordinate => matches!(conv, Int2 | Int4 | Int8 | Float4 | Float8 | Numeric),
            Role::Time => matches!(conv, Timestamptz | Timestamp | Date),
            Role::Channel => matches!(conv, Bool | Text),
            Role::OutScore => matches!(conv, Float4 | Float8 | Numeric),
            Role::OutLevel => matches!(conv, Text),
            Role::OutReasons => matches!(conv, Jsonb | Text),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Role::Key => "a scalar type (text, integer, uuid...)",
            Role::Amount | Role::Coordinate => "numeric, double precision, real or an integer type",
            Role::Time => "timestamptz, timestamp or date",
            Role::Channel => "boolean (card present) or text",
            Role::OutScore => "double precision, real or numeric",
            Role::OutLevel => "text or varchar",
            Role::OutReasons => "jsonb or text",
        }
    }
}

fn conv_of(typoid: Oid) -> Conv {
    match typoid {
        pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID | pg_sys::NAMEOID => Conv::Text,
        pg_sys::INT2OID => Conv::Int2,
        pg_sys::INT4OID => Conv::Int4,
        pg_sys::INT8OID => Conv::Int8,
        pg_sys::FLOAT4OID => Conv::Float4,
        pg_sys::FLOAT8OID => Conv::Float8,
        pg_sys::NUMERICOID => Conv::Numeric,
        pg_sys::TIMESTAMPTZOID => Conv::Timestamptz,
        pg_sys::TIMESTAMPOID => Conv::Timestamp,
        pg_sys::DATEOID => Conv::Date,
        pg_sys::BOOLOID => Conv::Bool,
        pg_sys::JSONBOID => Conv::Jsonb,
        _ => Conv::Output,
    }
}

fn type_name(typoid: Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd C string for any type oid (or errors).
    unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typoid)).to_string_lossy().into_owned() }
}

/// Finds `name` in `rel` and checks its type suits `role`.
pub fn resolve_column(
    rel: &PgRelation,
    table: &str,
    name: &str,
    role: Role,
    role_name: &'static str,
) -> Result<Column> {
    let tupdesc = rel.tuple_desc();
    for (i, att) in tupdesc.iter().enumerate() {
        if att.is_dropped() || att.name() != name {
            continue;
        }
        let typoid = att.type_oid().value();
        let mut conv = conv_of(typoid);
        if conv == Conv::Output {
            // SAFETY: plain syscache lookups on a valid type oid.
            let (typtype, is_array) =
                unsafe { (pg_sys::get_typtype(typoid) as u8, pg_sys::get_element_type(typoid) != pg_sys::InvalidOid) };
            if typtype == b'c' || typtype == b'p' || is_array {
                conv = Conv::Jsonb; // not accepted by any role: arrays/composites/pseudo-types
            }
        }
        if !role.accepts(conv) {
            return Err(FraudError::WrongType {
                table: table.to_string(),
                column: name.to_string(),
                role: role_name,
                found: type_name(typoid),
                expected: role.expected(),
            });
        }
        return Ok(Column { name: name.to_string(), attnum: (i + 1) as i16, typoid, conv });
    }
    Err(FraudError::MissingColumn { table: table.to_string(), column: name.to_string(), role: role_name })
}

/// A watched table with its mapping resolved.
#[derive(Debug)]
pub struct Watch {
    /// `fraud.watches.id`.
    pub id: i32,
    /// The table.
    pub relid: Oid,
    /// Its row type (for `fraud_score(t)`).
    pub rowtype: Oid,
    /// Schema-qualified, quoted name.
    pub name: String,
    /// Columns, or the error that makes the mapping unusable (a column dropped since).
    pub columns: std::result::Result<Columns, String>,
    /// The output columns, resolved on their own so a broken input mapping can still mark
    /// rows `unscored`.
    pub outputs: Outputs,
    /// Multiplier applied to the amount column (e.g. 0.01 for cents).
    pub amount_scale: f64,
}

/// The resolved columns of a watch.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Entity key.
    pub entity: Column,
    /// Amount.
    pub amount: Column,
    /// Timestamp.
    pub ts: Column,
    /// Row key for alerts and labels.
    pub key: Option<Column>,
    /// Merchant / terminal.
    pub merchant: Option<Column>,
    /// Device.
    pub device: Option<Column>,
    /// IP address.
    pub ip: Option<Column>,
    /// Country.
    pub country: Option<Column>,
    /// Latitude / longitude.
    pub location: Option<(Column, Column)>,
    /// Second location pair.
    pub location2: Option<(Column, Column)>,
    /// Card present / channel.
    pub channel: Option<Column>,
}

/// Where scores are written on the row, when mapped.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// `risk_score`.
    pub score: Option<Column>,
    /// `risk_level`.
    pub level: Option<Column>,
    /// `risk_reasons`.
    pub reasons: Option<Column>,
}

impl Outputs {
    /// Resolves what can be resolved; a missing or mistyped output column is simply not written.
    pub fn resolve(rel: &PgRelation, table: &str, m: &Mapping) -> Outputs {
        let get = |n: &Option<String>, role, role_name| {
            n.as_deref().and_then(|n| resolve_column(rel, table, n, role, role_name).ok())
        };
        Outputs {
            score: get(&m.score_out, Role::OutScore, "score_column"),
            level: get(&m.level_out, Role::OutLevel, "level_column"),
            reasons: get(&m.reasons_out, Role::OutReasons, "reasons_column"),
        }
    }
}

/// The raw mapping, as stored in `fraud.watches` (column names).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// Entity column.
    pub entity: String,
    /// Amount column.
    pub amount: String,
    /// Timestamp column.
    pub ts: String,
    /// Optional columns by role.
    pub key: Option<String>,
    /// Merchant column.
    pub merchant: Option<String>,
    /// Device column.
    pub device: Option<String>,
    /// IP column.
    pub ip: Option<String>,
    /// Country column.
    pub country: Option<String>,
    /// Latitude column.
    pub lat: Option<String>,
    /// Longitude column.
    pub lon: Option<String>,
    /// Second latitude column.
    pub lat2: Option<String>,
    /// Second longitude column.
    pub lon2: Option<String>,
    /// Channel column.
    pub channel: Option<String>,
    /// Output score column.
    pub score_out: Option<String>,
    /// Output level column.
    pub level_out: Option<String>,
    /// Output reasons column.
    pub reasons_out: Option<String>,
}

/// Resolves a mapping against a table; the first problem is the error.
pub fn resolve_mapping(rel: &PgRelation, table: &str, m: &Mapping) -> Result<Columns> {
    let col = |name: &str, role, role_name| resolve_column(rel, table, name, role, role_name);
    let opt = |name: &Option<String>, role, role_name| {
        name.as_deref().map(|n| resolve_column(rel, table, n, role, role_name)).transpose()
    };
    let pair = |a: &Option<String>, b: &Option<String>, na, nb| -> Result<Option<(Column, Column)>> {
        match (a, b) {
            (Some(x), Some(y)) => Ok(Some((col(x, Role::Coordinate, na)?, col(y, Role::Coordinate, nb)?))),
            (None, None) => Ok(None),
            _ => Err(FraudError::InvalidArgument(format!("{na} and {nb} must be mapped together"))),
        }
    };
    Ok(Columns {
        entity: col(&m.entity, Role::Key, "entity")?,
        amount: col(&m.amount, Role::Amount, "amount")?,
        ts: col(&m.ts, Role::Time, "ts")?,
        key: opt(&m.key, Role::Key, "key")?,
        merchant: opt(&m.merchant, Role::Key, "merchant")?,
        device: opt(&m.device, Role::Key, "device")?,
        ip: opt(&m.ip, Role::Key, "ip")?,
        country: opt(&m.country, Role::Key, "country")?,
        location: pair(&m.lat, &m.lon, "lat", "lon")?,
        location2: pair(&m.lat2, &m.lon2, "lat2", "lon2")?,
        channel: opt(&m.channel, Role::Channel, "channel")?,
    })
}

/// A compiled rule and the table it is limited to.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The compiled rule.
    pub spec: RuleSpec,
    /// `None` = applies to every watched table.
    pub source: Option<Oid>,
}

/// Everything the scoring path reads from the catalog.
#[derive(Debug, Default)]
pub struct Config {
    /// Watches by table.
    pub by_relid: HashMap<Oid, Rc<Watch>>,
    /// Watches by row type.
    pub by_rowtype: HashMap<Oid, Rc<Watch>>,
    /// Enabled rules, in name order.
    pub rules: Vec<Rule>,
    /// The rules that apply to each watched table, ready to evaluate.
    pub rules_by_relid: HashMap<Oid, Rc<Vec<RuleSpec>>>,
    /// Active models by the table they score, in name order.
    pub models_by_relid: HashMap<Oid, Rc<Vec<crate::models::ActiveModel>>>,
    /// Owner of the extension (internal writes run as this role).
    pub owner: Oid,
}

impl Config {
    /// The watch for a table, or a clear error.
    pub fn watch(&self, relid: Oid) -> Result<&Rc<Watch>> {
        self.by_relid
            .get(&relid)
            .ok_or_else(|| FraudError::NotWatched(format!("table {} is not watched by pg_fraud", relation_name(relid))))
    }

    /// The only watch, when exactly one table is watched.
    pub fn single_watch(&self) -> Result<&Rc<Watch>> {
        match self.by_relid.len() {
            1 => Ok(self.by_relid.values().next().expect("one watch")),
            0 => Err(FraudError::NotWatched("no table is watched by pg_fraud".into())),
            n => Err(FraudError::NotWatched(format!("{n} tables are watched: name one with the source argument"))),
        }
    }

    /// Rules that apply to a table.
    pub fn rules_for(&self, relid: Oid) -> Rc<Vec<RuleSpec>> {
        self.rules_by_relid.get(&relid).cloned().unwrap_or_default()
    }
}

/// Quoted, schema-qualified name of a relation (or its oid if it is gone).
pub fn relation_name(relid: Oid) -> String {
    // SAFETY: syscache lookups; both return NULL for a missing relation.
    unsafe {
        let rel = pg_sys::get_rel_name(relid);
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if rel.is_null() || nsp.is_null() {
            return format!("oid {}", relid.to_u32());
        }
        let q = |p: *const std::ffi::c_char| {
            std::ffi::CStr::from_ptr(pg_sys::quote_identifier(p)).to_string_lossy().into_owned()
        };
        format!("{}.{}", q(nsp), q(rel))
    }
}

/// The current configuration, rebuilt if invalidated.
pub fn config() -> Result<Rc<Config>> {
    let gen = generation();
    if let Some(cfg) = CONFIG.with(|c| c.borrow().as_ref().filter(|(g, _)| *g == gen).map(|(_, cfg)| cfg.clone())) {
        return Ok(cfg);
    }
    let cfg = Rc::new(load()?);
    CONFIG.with(|c| *c.borrow_mut() = Some((gen, cfg.clone())));
    Ok(cfg)
}

fn load() -> Result<Config> {
    // Remember which relations invalidate us before reading them, so an invalidation that
    // arrives while we read is not lost.
    let watches_relid = Spi::get_one::<Oid>("SELECT 'fraud.watches'::pg_catalog.regclass::pg_catalog.oid")?
        .unwrap_or(pg_sys::InvalidOid);
    WATCHES_RELID.with(|w| w.set(watches_relid));
    let owner = Spi::get_one::<Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_fraud'",
    )?
    .ok_or_else(|| FraudError::Config("extension pg_fraud is not installed in this database".into()))?;

    let mut cfg = Config { owner, ..Default::default() };
    let mut relids = Vec::new();
    as_owner(owner, || load_tables(&mut cfg, &mut relids))?;
    for &relid in &relids {
        let specs = cfg.rules.iter().filter(|r| r.source.is_none_or(|s| s == relid)).map(|r| r.spec.clone()).collect();
        cfg.rules_by_relid.insert(relid, Rc::new(specs));
    }
    WATCHED_RELIDS.with(|w| *w.borrow_mut() = relids);
    Ok(cfg)
}

fn relation_exists(relid: Oid) -> bool {
    // SAFETY: syscache lookup; NULL when the relation does not exist.
    unsafe { !pg_sys::get_rel_name(relid).is_null() }
}

fn load_tables(cfg: &mut Config, relids: &mut Vec<Oid>) -> Result<()> {
    Spi::connect(|client| -> Result<()> {
        let rows = client.select(
            "SELECT id, relid::pg_catalog.oid, entity_column::pg_catalog.text, amount_column::pg_catalog.text, ts_column::pg_catalog.text, key_column::pg_catalog.text,
                    merchant_column::pg_catalog.text, device_column::pg_catalog.text, ip_column::pg_catalog.text, country_column::pg_catalog.text,
                    lat_column::pg_catalog.text, lon_column::pg_catalog.text, lat2_column::pg_catalog.text, lon2_column::pg_catalog.text, channel_column::pg_catalog.text,
                    amount_scale, score_column::pg_catalog.text, level_column::pg_catalog.text, reasons_column::pg_catalog.text
               FROM fraud.watches ORDER BY id",
            None,
            &[],
        )?;
        for row in rows {
            let id: i32 = row.get(1)?.unwrap_or_default();
            let relid: Oid = row.get(2)?.unwrap_or(pg_sys::InvalidOid);
            let s = |i: usize| -> Result<Option<String>> { Ok(row.get::<String>(i)?) };
            let m = Mapping {
                entity: s(3)?.unwrap_or_default(),
                amount: s(4)?.unwrap_or_default(),
                ts: s(5)?.unwrap_or_default(),
                key: s(6)?,
                merchant: s(7)?,
                device: s(8)?,
                ip: s(9)?,
                country: s(10)?,
                lat: s(11)?,
                lon: s(12)?,
                lat2: s(13)?,
                lon2: s(14)?,
                channel: s(15)?,
                score_out: s(17)?,
                level_out: s(18)?,
                reasons_out: s(19)?,
            };
            let amount_scale: f64 = row.get(16)?.unwrap_or(1.0);
            let name = relation_name(relid);
            // A watched table that was dropped disappears from fraud.watches via the event
            // trigger; if one slipped through, skip it rather than failing every other table.
            if !relation_exists(relid) {
                continue;
            }
            // SAFETY: the relation exists (checked above); the lock keeps it while we read it.
            let rel = unsafe { PgRelation::with_lock(relid, pg_sys::AccessShareLock as _) };
            let columns = resolve_mapping(&rel, &name, &m).map_err(|e| e.to_string());
            let outputs = Outputs::resolve(&rel, &name, &m);
            // SAFETY: syscache lookup on a relation we hold a lock on.
            let rowtype = unsafe { pg_sys::get_rel_type_id(relid) };
            drop(rel);
            let w = Rc::new(Watch { id, relid, rowtype, name, columns, outputs, amount_scale });
            relids.push(relid);
            cfg.by_rowtype.insert(rowtype, w.clone());
            cfg.by_relid.insert(relid, w);
        }
        let rows = client.select(
            "SELECT name, expression, weight, action, source_table::pg_catalog.oid FROM fraud.rules WHERE enabled ORDER BY name",
            None,
            &[],
        )?;
        for row in rows {
            let name: String = row.get(1)?.unwrap_or_default();
            let expression: String = row.get(2)?.unwrap_or_default();
            let weight: f64 = row.get(3)?.unwrap_or(0.0);
            let action = row.get::<String>(4)?.as_deref().and_then(Action::parse).unwrap_or(Action::Score);
            let source: Option<Oid> = row.get(5)?;
            match rules::compile(&expression) {
                Ok(compiled) => {
                    cfg.rules.push(Rule { spec: RuleSpec { name, expression, compiled, weight, action }, source })
                }
                // Rules are validated on write; one that no longer compiles (a feature renamed
                // in an upgrade) is skipped loudly rather than breaking every insert.
                Err(e) => pgrx::warning!("pg_fraud: rule \"{name}\" is skipped: {e}"),
            }
        }
        let rows = client.select(
            "SELECT name, version, kind, source_table::pg_catalog.oid, weight, signal_from, signal_to \
               FROM fraud.models WHERE active ORDER BY name",
            None,
            &[],
        )?;
        let mut models: HashMap<Oid, Vec<crate::models::ActiveModel>> = HashMap::new();
        for row in rows {
            let relid: Oid = row.get(4)?.unwrap_or(pg_sys::InvalidOid);
            models.entry(relid).or_default().push(crate::models::ActiveModel::new(
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
                row.get(3)?.unwrap_or_default(),
                row.get(5)?.unwrap_or(0.0),
                row.get(6)?.unwrap_or(0.0),
                row.get(7)?.unwrap_or(1.0),
            ));
        }
        cfg.models_by_relid = models.into_iter().map(|(k, v)| (k, Rc::new(v))).collect();
        Ok(())
    })
}

/// Runs `f` as the extension owner with `SECURITY_RESTRICTED_OPERATION`, like a
/// `SECURITY DEFINER` function: internal tables need no grants to application roles, and
/// nothing user-controlled runs meanwhile (all internal SQL is schema-qualified, operators
/// included). An ERROR inside `f` restores the caller's identity through transaction abort.
pub fn as_owner<T>(owner: Oid, f: impl FnOnce() -> T) -> T {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx = 0;
    // SAFETY: plain reads/writes of the backend's current user id and security context.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let out = f();
    // SAFETY: as above, restoring what we saved.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    out
}
