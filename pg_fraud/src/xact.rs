//! Transaction hooks: write anything a statement left unwritten, send the one NOTIFY, and
//! forget backend-local state when a (sub)transaction ends.

use pgrx::pg_guard;
use pgrx::pg_sys::{self, SubTransactionId};
use pgrx::spi::Spi;

use crate::error::raise;
use crate::{alerts, catalog, scorelog, store, trigger};

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // Statement triggers normally write profiles; paths that skip statement triggers
        // (logical replication apply) leave deltas for us. Errors here abort the commit,
        // which is what we want: a commit must never lose profile updates silently.
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            if store::has_pending() || alerts::has_errors() || scorelog::has_pending() {
                let owner = catalog::config().unwrap_or_else(|e| raise(e)).owner;
                let res =
                    catalog::as_owner(owner, || Spi::connect_mut(|client| trigger::flush_statement(client, owner)));
                if let Err(e) = res {
                    raise(e);
                }
            }
            if event == XACT_EVENT_PRE_COMMIT {
                alerts::notify_pending();
            } else {
                // PREPARE TRANSACTION cannot carry a NOTIFY; the alerter's poll finds the
                // alert after COMMIT PREPARED.
                alerts::clear();
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE => {
            store::clear();
            alerts::clear();
            scorelog::clear();
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: SubTransactionId,
    parent: SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            store::on_subxact_abort(my_subid);
            alerts::on_subxact_abort(my_subid);
            scorelog::on_subxact_abort(my_subid);
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => store::on_subxact_commit(my_subid, parent),
        _ => {}
    }
}

/// Registers the callbacks; called once from `_PG_init`.
pub fn init() {
    // SAFETY: registering static functions; Postgres keeps them for the backend's life.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}
