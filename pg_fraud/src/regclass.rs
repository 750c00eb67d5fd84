//! `regclass` arguments without opening the relation.
//!
//! pgrx maps `regclass` to `PgRelation`, which opens the relation for the whole call; a
//! function that then runs `ALTER TABLE` on it fails with "cannot ALTER TABLE ... because it
//! is being used by active queries in this session". `RegClass` is just the oid.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::pg_sys::{self, Oid};
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, IntoDatum};

/// A relation oid passed as `regclass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegClass(pub Oid);

impl FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: Oid) -> Option<Self> {
        // SAFETY: a regclass datum is an oid passed by value.
        if is_null {
            None
        } else {
            unsafe { Oid::from_datum(datum, false) }.map(RegClass)
        }
    }
}

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> Oid {
        pg_sys::REGCLASSOID
    }
}

// SAFETY: regclass is a by-value oid; unboxing through FromDatum is what pgrx does for Oid.
unsafe impl<'fcx> ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller guarantees a non-null regclass argument.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

// SAFETY: the SQL type is the built-in regclass.
unsafe impl SqlTranslatable for RegClass {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(RegClass);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("regclass"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal("regclass")));
}
