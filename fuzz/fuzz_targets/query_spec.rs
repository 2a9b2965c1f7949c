//! The chat's `query_ledger` arguments (model output, untrusted): `QuerySpec::from_json` must
//! never panic, and every spec it accepts must compile to SQL for both stores without
//! panicking.
#![no_main]

use chrono::{TimeZone, Utc};
use ledger::{Principal, QuerySpec};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(args) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let now = Utc
        .timestamp_opt(1_780_000_000, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let Ok(spec) = QuerySpec::from_json(&args, now) else {
        return;
    };
    let principal = Principal::new("ana", "bakery");
    for sql in ledger::store::spec_sql_text(&spec, &principal) {
        assert!(sql.starts_with("SELECT "), "{sql}");
    }
});
