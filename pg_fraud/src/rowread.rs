//! Reading a watched row's mapped columns into plain Rust values.

use std::ffi::CStr;

use pgrx::pg_sys::{self, Datum};
use pgrx::FromDatum;

use fraud_core::features::Txn;

use crate::catalog::{Column, Columns, Conv};

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The mapped values of one row, owned.
#[derive(Debug, Default, Clone)]
pub struct RowValues {
    /// Entity key as text.
    pub entity: Option<String>,
    /// Amount after scaling (NaN/±Inf preserved so they can be flagged).
    pub amount: Option<f64>,
    /// Row timestamp, µs since the Unix epoch; `None` for NULL or ±infinity.
    pub t_us: Option<i64>,
    /// Row key as text.
    pub key: Option<String>,
    /// Merchant.
    pub merchant: Option<String>,
    /// Device.
    pub device: Option<String>,
    /// IP address.
    pub ip: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// Location (unvalidated).
    pub location: Option<(f64, f64)>,
    /// Second location (unvalidated).
    pub location2: Option<(f64, f64)>,
    /// Card present.
    pub card_present: Option<bool>,
}

impl RowValues {
    /// The scoring view of the row at time `t_us` (already defaulted/clamped by the caller).
    pub fn txn(&self, t_us: i64, now_us: i64) -> Txn<'_> {
        Txn {
            entity: self.entity.as_deref(),
            amount: self.amount,
            t_us,
            now_us,
            merchant: self.merchant.as_deref(),
            device: self.device.as_deref(),
            ip: self.ip.as_deref(),
            country: self.country.as_deref(),
            location: self.location,
            location2: self.location2,
            card_present: self.card_present,
        }
    }
}

/// Channel labels read as card-present / card-not-present (lower-case).
const PRESENT: &[&str] = &[
    "card_present",
    "present",
    "cp",
    "pos",
    "in_store",
    "instore",
    "store",
    "chip",
    "swipe",
    "contactless",
    "emv",
    "atm",
    "terminal",
    "f2f",
];
const NOT_PRESENT: &[&str] = &[
    "card_not_present",
    "not_present",
    "cnp",
    "ecom",
    "ecommerce",
    "e-commerce",
    "online",
    "web",
    "moto",
    "mail",
    "phone",
    "app",
    "in_app",
    "mobile",
];

/// A row's datums, by attribute number.
pub struct Datums<'a> {
    /// Values, index = attnum − 1.
    pub values: &'a [Datum],
    /// Null flags, index = attnum − 1.
    pub nulls: &'a [bool],
}

impl Datums<'_> {
    fn get(&self, c: &Column) -> Option<Datum> {
        let i = (c.attnum - 1) as usize;
        match self.nulls.get(i) {
            Some(false) => Some(self.values[i]),
            _ => None,
        }
    }

    fn text(&self, c: &Column) -> Option<String> {
        self.get(c).map(|d| datum_to_text(d, c))
    }

    fn number(&self, c: &Column) -> Option<f64> {
        self.get(c).map(|d| datum_to_f64(d, c.conv))
    }
}

/// Renders a key-like datum as text (fast paths for common types, the output function otherwise).
pub fn datum_to_text(d: Datum, c: &Column) -> String {
    // SAFETY: `d` is a non-null datum of the column's type, as resolved from the catalog.
    unsafe {
        match c.conv {
            Conv::Text => {
                let s = <&str>::from_datum(d, false).unwrap_or_default();
                if c.typoid == pg_sys::BPCHAROID {
                    s.trim_end_matches(' ').to_string()
                } else {
                    s.to_string()
                }
            }
            Conv::Int2 => (d.value() as i16).to_string(),
            Conv::Int4 => (d.value() as i32).to_string(),
            Conv::Int8 => (d.value() as i64).to_string(),
            Conv::Bool => (d.value() != 0).to_string(),
            _ if c.typoid == pg_sys::UUIDOID => {
                let bytes = std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), 16);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
            }
            _ => {
                let mut out_fn = pg_sys::InvalidOid;
                let mut varlena = false;
                pg_sys::getTypeOutputInfo(c.typoid, &mut out_fn, &mut varlena);
                CStr::from_ptr(pg_sys::OidOutputFunctionCall(out_fn, d)).to_string_lossy().into_owned()
            }
        }
    }
}

/// Reads a numeric-like datum as f64; numeric overflow gives ±Infinity rather than an error.
pub fn datum_to_f64(d: Datum, conv: Conv) -> f64 {
    // SAFETY: `d` is a non-null datum of a type matching `conv`.
    unsafe {
        match conv {
            Conv::Int2 => d.value() as i16 as f64,
            Conv::Int4 => d.value() as i32 as f64,
            Conv::Int8 => d.value() as i64 as f64,
            Conv::Float4 => f32::from_datum(d, false).unwrap_or(f32::NAN) as f64,
            Conv::Float8 => f64::from_datum(d, false).unwrap_or(f64::NAN),
            Conv::Numeric => {
                pgrx::direct_function_call::<f64>(pg_sys::numeric_float8_no_overflow, &[Some(d)]).unwrap_or(f64::NAN)
            }
            _ => f64::NAN,
        }
    }
}

/// Reads a time-like datum as µs since the Unix epoch; `None` for ±infinity.
pub fn datum_to_unix_us(d: Datum, conv: Conv) -> Option<i64> {
    match conv {
        Conv::Timestamptz | Conv::Timestamp => {
            let v = d.value() as i64;
            // i64::MIN / i64::MAX are -infinity / infinity.
            if v == i64::MIN || v == i64::MAX {
                None
            } else {
                v.checked_add(PG_EPOCH_OFFSET_US)
            }
        }
        Conv::Date => {
            let days = d.value() as i32;
            if days == i32::MIN || days == i32::MAX {
                None
            } else {
                (days as i64).checked_mul(86_400_000_000)?.checked_add(PG_EPOCH_OFFSET_US)
            }
        }
        _ => None,
    }
}

/// µs since the Unix epoch → Postgres `timestamptz` datum value.
pub fn unix_us_to_timestamptz(t_us: i64) -> i64 {
    t_us.saturating_sub(PG_EPOCH_OFFSET_US)
}

/// Postgres `timestamptz` value → µs since the Unix epoch.
pub fn timestamptz_to_unix_us(ts: i64) -> i64 {
    ts.saturating_add(PG_EPOCH_OFFSET_US)
}

fn channel(d: &Datums, c: &Column) -> Option<bool> {
    let v = d.get(c)?;
    match c.conv {
        Conv::Bool => Some(v.value() != 0),
        _ => {
            let s = datum_to_text(v, c).trim().to_ascii_lowercase();
            if PRESENT.contains(&s.as_str()) {
                Some(true)
            } else if NOT_PRESENT.contains(&s.as_str()) {
                Some(false)
            } else {
                None
            }
        }
    }
}

/// Extracts every mapped value of a row.
pub fn read_row(cols: &Columns, d: &Datums, amount_scale: f64) -> RowValues {
    let pair = |p: &Option<(Column, Column)>| p.as_ref().and_then(|(a, b)| Some((d.number(a)?, d.number(b)?)));
    RowValues {
        entity: d.text(&cols.entity),
        amount: d.number(&cols.amount).map(|a| a * amount_scale),
        t_us: d.get(&cols.ts).and_then(|v| datum_to_unix_us(v, cols.ts.conv)),
        key: cols.key.as_ref().and_then(|c| d.text(c)),
        merchant: cols.merchant.as_ref().and_then(|c| d.text(c)),
        device: cols.device.as_ref().and_then(|c| d.text(c)),
        ip: cols.ip.as_ref().and_then(|c| d.text(c)),
        country: cols.country.as_ref().and_then(|c| d.text(c)),
        location: pair(&cols.location),
        location2: pair(&cols.location2),
        card_present: cols.channel.as_ref().and_then(|c| channel(d, c)),
    }
}

/// Deforms a heap tuple into reusable buffers and calls `f` with the datums.
///
/// # Safety
/// `tuple` and `tupdesc` must be valid and describe each other.
pub unsafe fn with_datums<T>(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, f: impl FnOnce(&Datums) -> T) -> T {
    // SAFETY: the caller guarantees the pointers; the buffers are sized to natts.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        f(&Datums { values: &values, nulls: &nulls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_conversions() {
        assert_eq!(datum_to_unix_us(Datum::from(0i64), Conv::Timestamptz), Some(PG_EPOCH_OFFSET_US));
        assert_eq!(datum_to_unix_us(Datum::from(i64::MAX), Conv::Timestamptz), None);
        assert_eq!(datum_to_unix_us(Datum::from(i64::MIN), Conv::Timestamp), None);
        assert_eq!(datum_to_unix_us(Datum::from(1i32), Conv::Date), Some(PG_EPOCH_OFFSET_US + 86_400_000_000));
        assert_eq!(datum_to_unix_us(Datum::from(i32::MAX), Conv::Date), None);
        assert_eq!(timestamptz_to_unix_us(unix_us_to_timestamptz(123)), 123);
    }
}
