//! Feeds arbitrary bytes to the strict span parser (`ledger::strict`) and the draft validation
//! after it: neither may panic; whatever the parser accepts must print canonically to text it
//! accepts again and that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ledger::{Draft, Principal, crypto, strict};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = strict::parse(text) else {
        return;
    };
    let canonical = crypto::canonical(&value);
    match strict::parse(&canonical) {
        Ok(again) => assert_eq!(crypto::canonical(&again), canonical),
        Err(e) => panic!("canonical text is refused: {e}\n{canonical}"),
    }
    let _ = Draft::from_value(
        value,
        &Principal::new("fuzz", "fuzz"),
        &[],
        chrono::DateTime::UNIX_EPOCH,
    );
});
