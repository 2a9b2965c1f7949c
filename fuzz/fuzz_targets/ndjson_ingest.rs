//! An NDJSON request body as `POST /api/spans` and `logline add` read it: splitting into
//! numbered lines and parsing each (with and without a request idempotency prefix) must never
//! panic, and every non-blank line gets exactly one result, in order.
#![no_main]

// The server's own parsing code, compiled here: depending on the `server` crate would build
// its whole tree (providers, QuickJS, TLS) with fuzzing instrumentation. `ingest.rs` uses only
// `ledger`, `chrono`, `serde_json` and `tracing`.
#[allow(dead_code)]
#[path = "../../server/src/ingest.rs"]
mod ingest;

use ledger::Principal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let lines = ingest::ndjson_lines(body);
    let principal = Principal::new("ana", "bakery");
    let by = ingest::Submitter {
        principal: &principal,
        trusted: &[],
        allow_reserved: false,
    };
    for prefix in [None, Some("req-1")] {
        let (drafts, slots) = ingest::parse_lines(&lines, by, prefix);
        assert_eq!(slots.len(), lines.len());
        let numbers: Vec<usize> = slots.iter().map(|(n, _)| *n).collect();
        let expected: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, expected);
        let ok = slots.iter().filter(|(_, r)| r.is_ok()).count();
        assert_eq!(ok, drafts.len());
    }
});
