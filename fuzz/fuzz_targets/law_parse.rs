//! Feeds arbitrary bytes to the law parser: it must never panic, and whatever it accepts must
//! print to text that parses back to the same law.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(law) = ledger::law::parse(source) {
        let printed = law.to_string();
        match ledger::law::parse(&printed) {
            Ok(again) => assert_eq!(
                again, law,
                "canonical text reads back differently:\n{printed}"
            ),
            Err(e) => panic!("canonical text does not parse: {e}\n{printed}"),
        }
    }
});
