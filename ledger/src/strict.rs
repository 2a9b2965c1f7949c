//! Strict, lossless JSON input: the one parser every submission path uses (a JSON body, each
//! NDJSON line, `logline add`).
//!
//! `serde_json` keeps the last of two equal keys and rounds numbers to an IEEE double without
//! a word, so `{"who":"ana","who":"x"}` would store `x` and `18446744073709551617` would come
//! back as `1.8446744073709552e+19`. A span is signed as the ledger stores it, so silently
//! stored changes are refused instead: a scanner reads the raw text first and names the first
//! duplicate key or the first number whose canonical form (RFC 8785, as
//! [`crypto::canonical`] writes it) denotes another decimal value than the text sent.

use serde_json::Value;

use crate::crypto;
use crate::error::InputError;

/// Largest accepted span, as serialized JSON. Larger payloads belong in object storage, cited
/// by digest. (Defined here, where input is first read; `span` re-exports it.)
pub const MAX_SPAN_BYTES: usize = 256 * 1024;

/// Deeper documents are left to `serde_json`, which refuses them (its recursion limit is 128).
const MAX_DEPTH: usize = 128;

/// Parses one submitted JSON text: the size limit, then the strict check, then `serde_json`.
pub fn parse(text: &str) -> Result<Value, InputError> {
    if text.len() > MAX_SPAN_BYTES {
        return Err(InputError::TooLarge {
            size: text.len(),
            limit: MAX_SPAN_BYTES,
        });
    }
    check(text)?;
    serde_json::from_str(text).map_err(|e| InputError::NotJson(e.to_string()))
}

/// Refuses duplicate keys (at any depth) and numbers that would not read back as sent. Text
/// that is not JSON passes: `serde_json` then says precisely what is wrong with it.
pub fn check(text: &str) -> Result<(), InputError> {
    let mut s = Scanner {
        b: text.as_bytes(),
        text,
        i: 0,
        path: Vec::new(),
    };
    match s.value(0) {
        Ok(()) | Err(Stop::Malformed) => Ok(()),
        Err(Stop::Refused(e)) => Err(e),
    }
}

enum Stop {
    /// Not JSON (or too deep): left for `serde_json` to report.
    Malformed,
    Refused(InputError),
}

/// One step of the path to the value being scanned.
enum Step {
    Key(String),
    Index(usize),
}

struct Scanner<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
    path: Vec<Step>,
}

impl Scanner<'_> {
    /// The JSON pointer (RFC 6901) of the value being scanned.
    fn pointer(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            out.push('/');
            match step {
                Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
                Step::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Malformed);
        }
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => {
                // Literals (true, false, null) and anything else: skip a word.
                while let Some(c) = self.b.get(self.i) {
                    if !c.is_ascii_alphabetic() {
                        break;
                    }
                    self.i += 1;
                }
                Ok(())
            }
            None => Err(Stop::Malformed),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Stop> {
        self.i += 1;
        let mut keys: Vec<String> = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(Stop::Malformed);
            }
            let key = self.string()?;
            let duplicate = keys.contains(&key);
            self.path.push(Step::Key(key.clone()));
            if duplicate {
                return Err(Stop::Refused(InputError::DuplicateKey {
                    key,
                    at: self.pointer(),
                }));
            }
            keys.push(key);
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(Stop::Malformed);
            }
            self.i += 1;
            self.value(depth + 1)?;
            self.path.pop();
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Stop::Malformed),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Stop> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.path.push(Step::Index(index));
            self.value(depth + 1)?;
            self.path.pop();
            index += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Stop::Malformed),
            }
        }
    }

    /// A string token, decoded (keys are compared by what they mean, not how they are escaped).
    fn string(&mut self) -> Result<String, Stop> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            match self.b.get(self.i) {
                None => return Err(Stop::Malformed),
                Some(b'\\') => {
                    escaped = true;
                    self.i += 2;
                }
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(_) => self.i += 1,
            }
        }
        let raw = self.text.get(start..self.i).ok_or(Stop::Malformed)?;
        if escaped {
            serde_json::from_str(raw).map_err(|_| Stop::Malformed)
        } else {
            Ok(raw[1..raw.len() - 1].to_string())
        }
    }

    fn number(&mut self) -> Result<(), Stop> {
        let start = self.i;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        let raw = self.text.get(start..self.i).ok_or(Stop::Malformed)?;
        match exact(raw) {
            Exactness::Exact => Ok(()),
            Exactness::Malformed => Err(Stop::Malformed),
            Exactness::Changed(stored) => Err(Stop::Refused(InputError::InexactNumber {
                at: self.pointer(),
                given: raw.to_string(),
                stored,
            })),
        }
    }
}

enum Exactness {
    Exact,
    Malformed,
    /// What the ledger would store instead (`None`: nothing, the number is out of range).
    Changed(Option<String>),
}

/// Whether a JSON number token reads back, once stored canonically, as the same decimal value.
fn exact(raw: &str) -> Exactness {
    // Short plain integers are always exact (|n| < 10^15 < 2^53).
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.len() <= 15 && !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        return Exactness::Exact;
    }
    let Some(given) = Decimal::parse(raw) else {
        return Exactness::Malformed;
    };
    // Exactly the number `serde_json` would hand the ledger, written as the ledger writes it.
    let stored = match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Number(_)) => crypto::canonical(&v),
        Ok(_) => return Exactness::Malformed,
        // Valid grammar but out of range (e.g. 1e400).
        Err(_) => return Exactness::Changed(None),
    };
    match Decimal::parse(&stored) {
        Some(back) if back == given => Exactness::Exact,
        _ => Exactness::Changed(Some(stored)),
    }
}

/// A decimal value as significant digits and a power of ten: equal values, equal parts.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    /// No leading or trailing zeros; empty for zero.
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Parses JSON number grammar (`-?int(.frac)?([eE][+-]?exp)?`).
    fn parse(raw: &str) -> Option<Self> {
        let (negative, rest) = match raw.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, raw),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(p) => (&rest[..p], Some(&rest[p + 1..])),
            None => (rest, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (mantissa, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !all_digits(int) || (int.len() > 1 && int.starts_with('0')) {
            return None;
        }
        if frac.is_some_and(|f| !all_digits(f)) {
            return None;
        }
        let mut exponent: i64 = match exp {
            None => 0,
            Some(e) => {
                let body = e.strip_prefix(['+', '-']).unwrap_or(e);
                if !all_digits(body) {
                    return None;
                }
                // Saturating: a value this far out is refused by range anyway.
                let n = body
                    .parse::<i64>()
                    .unwrap_or(i64::MAX / 4)
                    .min(i64::MAX / 4);
                if e.starts_with('-') { -n } else { n }
            }
        };
        let frac = frac.unwrap_or("");
        exponent -= frac.len() as i64;
        let mut digits = format!("{int}{frac}");
        let trimmed = digits.trim_end_matches('0').len();
        exponent += (digits.len() - trimmed) as i64;
        digits.truncate(trimmed);
        let digits = digits.trim_start_matches('0').to_string();
        if digits.is_empty() {
            // Zero (and -0, which canonical JSON writes as 0) has one value.
            return Some(Self {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        Some(Self {
            negative,
            digits,
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z\\\\\"\\u{e000}-\\u{e0ff}\\x00-\\x1f]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\\\u{e000}]{0,4}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// What the ledger writes, it accepts back unchanged: canonical JSON has no repeated
        /// key and every number in it reads back as the same value.
        #[test]
        fn canonical_json_always_passes_and_reads_back_the_same(v in arb_json()) {
            let text = crypto::canonical(&v);
            let back = parse(&text);
            prop_assert!(back.is_ok(), "{text}: {back:?}");
            prop_assert_eq!(crypto::canonical(&back.unwrap()), text);
        }

        /// Any text: no panic, and whatever passes is what serde_json parses.
        #[test]
        fn any_text_is_checked_without_panicking(text in "[-+.eE0-9\\[\\]{}:,\" a\\\\u]{0,40}") {
            if let Ok(v) = parse(&text) {
                prop_assert_eq!(Some(v), serde_json::from_str::<Value>(&text).ok());
            }
        }
    }

    fn refused(text: &str) -> InputError {
        parse(text).expect_err(text)
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_with_a_pointer() {
        assert_eq!(
            refused(r#"{"who":"ana","who":"x"}"#).to_string(),
            "duplicate key `who` at `/who`: a key may appear only once per object"
        );
        let e = refused(r#"{"content":{"items":[{"a":1},{"a":1,"b":2,"a":3}]}}"#);
        assert!(
            matches!(&e, InputError::DuplicateKey { key, at } if key == "a" && at == "/content/items/1/a"),
            "{e:?}"
        );
        // Keys are compared decoded: an escape does not make a second key.
        let e = refused(r#"{"who":"ana","\u0077ho":"x"}"#);
        assert!(matches!(e, InputError::DuplicateKey { .. }), "{e:?}");
        // The same key in sibling objects is fine.
        assert!(parse(r#"{"a":{"k":1},"b":{"k":1},"k":[{"k":1},{"k":2}]}"#).is_ok());
        // Pointer escaping (RFC 6901).
        let e = refused(r#"{"a/b":{"x~":1,"x~":2}}"#);
        assert!(
            matches!(&e, InputError::DuplicateKey { at, .. } if at == "/a~1b/x~0"),
            "{e:?}"
        );
    }

    #[test]
    fn numbers_that_read_back_unchanged_pass() {
        for ok in [
            "0",
            "-0",
            "1.0",
            "0.1",
            "1e3",
            "1E+3",
            "-12.50",
            "9007199254740992",
            "-9007199254740992",
            "12345.678e-3",
            "1.7976931348623157e308",
            "5e-324",
            "1234567890e-30",
            "0.30000000000000004",
            "100000000000000000000",
        ] {
            let text = format!(r#"{{"n":{ok}}}"#);
            assert!(parse(&text).is_ok(), "{ok}: {:?}", parse(&text));
        }
    }

    #[test]
    fn numbers_that_would_change_are_refused_naming_the_field() {
        for bad in [
            "1e-400",
            "18446744073709551617",
            "9007199254740993",
            "3.141592653589793238",
            "1e400",
            "-1e400",
            "0.1000000000000000055511151231257827",
            // The nearest double, 900719925474099.25, is written 900719925474099.2.
            "9007199254740993.0e-1",
        ] {
            let text = format!(r#"{{"content":{{"x":[1,{bad}]}}}}"#);
            let e = refused(&text);
            assert!(
                matches!(&e, InputError::InexactNumber { at, given, .. } if at == "/content/x/1" && given == bad),
                "{bad}: {e:?}"
            );
        }
        assert_eq!(
            refused(r#"{"n":18446744073709551617}"#).to_string(),
            "number 18446744073709551617 at `/n` cannot be stored exactly (it would read back as \
             18446744073709552000); send it as a string"
        );
        assert!(
            refused(r#"{"n":1e400}"#)
                .to_string()
                .contains("out of range")
        );
    }

    #[test]
    fn malformed_text_is_left_to_serde_json() {
        for bad in [
            "{nope",
            "{\"a\":01}",
            "[1,]",
            "\"unterminated",
            "{\"a\" 1}",
            "",
        ] {
            assert!(matches!(refused(bad), InputError::NotJson(_)), "{bad}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(refused(&deep), InputError::NotJson(_)));
    }
}
