//! Suites: one YAML file each, parsed into closed types at the edge. Every mistake in a file —
//! YAML syntax, an unknown key, an unknown assertion type, a regex that does not compile, a
//! threshold out of range, two cases with one name — is a [`FixtureError`] naming the file, the
//! line and the column, so `ll-eval` can exit 1 with something a person can fix.
//!
//! The shape (see `evals/README.md` for the full vocabulary):
//!
//! ```yaml
//! suite: happy
//! tenant: demo                  # who asks, unless a case says otherwise
//! user: ana@padaria-lisboa.pt
//! threshold: 1.0                # fraction of cases that must pass
//! seed: [demo]                  # tenants the in-process target fills with the demo data
//! defaults: {assert: [...]}     # assertions every case gets (promptfoo's defaultTest)
//! cases:
//!   - name: why-d1
//!     question: why was D1 terminated?
//!     turns: ["what happened to D1?"]   # earlier turns of the same conversation
//!     assert:
//!       - {type: icontains, value: deadline}
//!       - {type: cites, value: law.decision}
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::assertion::Assertion;

/// Why a suite file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A suite as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    suite: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "one")]
    threshold: f64,
    tenant: String,
    user: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    seed: Option<Vec<String>>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    setup: Vec<Setup>,
    cases: Vec<Case>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    assert: Vec<Assertion>,
}

/// A span the suite needs in the ledger before it runs (e.g. instructions planted in a span's
/// content), appended as `user` in `tenant` (default: the suite's). Give it an `id` and an
/// `idempotency_key` so that running the suite again writes nothing new.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    pub span: serde_json::Map<String, serde_json::Value>,
}

/// One question and what a good answer must do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub question: String,
    /// Asked as this user (default: the suite's).
    #[serde(default)]
    pub user: Option<String>,
    /// In this tenant (default: the suite's).
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Earlier turns of the same conversation, asked first; their answers are not asserted.
    #[serde(default)]
    pub turns: Vec<String>,
    /// Promptfoo's test threshold: the weighted score the assertions must reach. Without it,
    /// every assertion must pass.
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub assert: Vec<Assertion>,
    /// The line of `name:` in the file (for reports).
    #[serde(skip)]
    pub line: usize,
}

/// A parsed, checked suite.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    pub description: Option<String>,
    pub path: PathBuf,
    /// `blake3:<hex>` of the file's bytes, recorded with every run.
    pub file_hash: String,
    /// Fraction of cases that must pass for the suite to pass.
    pub threshold: f64,
    pub tenant: String,
    pub user: String,
    pub roles: Vec<String>,
    /// Tenants the in-process target seeds with the demo data.
    pub seed: Vec<String>,
    /// Spans to append before the run.
    pub setup: Vec<Setup>,
    /// Cases, each with the suite's default assertions appended.
    pub cases: Vec<Case>,
}

impl Case {
    pub fn user<'a>(&'a self, suite: &'a Suite) -> &'a str {
        self.user.as_deref().unwrap_or(&suite.user)
    }

    pub fn tenant<'a>(&'a self, suite: &'a Suite) -> &'a str {
        self.tenant.as_deref().unwrap_or(&suite.tenant)
    }

    pub fn roles<'a>(&'a self, suite: &'a Suite) -> &'a [String] {
        self.roles.as_deref().unwrap_or(&suite.roles)
    }
}

impl Suite {
    /// Reads and checks a suite file.
    pub fn load(path: &Path) -> Result<Self, FixtureError> {
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses suite text; `path` only names the file in errors and reports.
    pub fn parse(path: &Path, text: &str) -> Result<Self, FixtureError> {
        let shown = path.display().to_string();
        let invalid = |line: usize, column: usize, message: String| FixtureError::Invalid {
            path: shown.clone(),
            line,
            column,
            message,
        };
        let raw: RawSuite = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            invalid(line, column, strip_location(&e.to_string()))
        })?;
        let at_key = |key: &str| line_of(text, key, None).unwrap_or(1);
        if !(0.0..=1.0).contains(&raw.threshold) {
            return Err(invalid(
                at_key("threshold"),
                1,
                format!(
                    "suite threshold must be a fraction of cases from 0 to 1, not {}",
                    raw.threshold
                ),
            ));
        }
        for (field, v) in [
            ("suite", &raw.suite),
            ("tenant", &raw.tenant),
            ("user", &raw.user),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(at_key(field), 1, format!("`{field}` is empty")));
            }
        }
        if raw.cases.is_empty() {
            return Err(invalid(at_key("cases"), 1, "the suite has no cases".into()));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut cases = Vec::with_capacity(raw.cases.len());
        let mut from = 0;
        for mut case in raw.cases {
            let line = line_of(text, "name", Some(&case.name))
                .filter(|l| *l > from)
                .or_else(|| line_of_after(text, "name", &case.name, from))
                .unwrap_or(1);
            from = line;
            case.line = line;
            if case.name.trim().is_empty() {
                return Err(invalid(line, 1, "a case has an empty `name`".into()));
            }
            if let Some(first) = seen.insert(case.name.clone(), line) {
                return Err(invalid(
                    line,
                    1,
                    format!(
                        "two cases are named `{}` (the first at line {first})",
                        case.name
                    ),
                ));
            }
            if case.question.trim().is_empty() {
                return Err(invalid(
                    line,
                    1,
                    format!("case `{}` has an empty `question`", case.name),
                ));
            }
            if let Some(t) = case.threshold
                && !(0.0..=1.0).contains(&t)
            {
                return Err(invalid(
                    line,
                    1,
                    format!(
                        "case `{}`: threshold must be a score from 0 to 1, not {t}",
                        case.name
                    ),
                ));
            }
            case.assert.extend(raw.defaults.assert.iter().cloned());
            if case.assert.is_empty() {
                return Err(invalid(
                    line,
                    1,
                    format!(
                        "case `{}` has no assertions (add `assert:` or suite `defaults`)",
                        case.name
                    ),
                ));
            }
            cases.push(case);
        }
        Ok(Self {
            name: raw.suite,
            description: raw.description,
            path: path.to_path_buf(),
            file_hash: format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex()),
            threshold: raw.threshold,
            seed: raw.seed.unwrap_or_else(|| vec![raw.tenant.clone()]),
            tenant: raw.tenant,
            user: raw.user,
            roles: raw.roles,
            setup: raw.setup,
            cases,
        })
    }
}

/// serde_yaml_ng appends " at line L column C" to its messages; the location is printed first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The first line (1-based) holding `key:` (optionally followed by `value`).
fn line_of(text: &str, key: &str, value: Option<&str>) -> Option<usize> {
    line_of_after(text, key, value.unwrap_or(""), 0)
}

fn line_of_after(text: &str, key: &str, value: &str, after: usize) -> Option<usize> {
    text.lines().enumerate().skip(after).find_map(|(i, l)| {
        let l = l.trim_start().trim_start_matches("- ").trim_start();
        let rest = l.strip_prefix(key)?.strip_prefix(':')?.trim();
        let rest = rest.trim_matches(|c| c == '"' || c == '\'');
        (value.is_empty() || rest == value).then_some(i + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Suite, FixtureError> {
        Suite::parse(Path::new("s.yaml"), text)
    }

    fn err(text: &str) -> (usize, usize, String) {
        match parse(text) {
            Err(FixtureError::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected an invalid fixture, got {other:?}"),
        }
    }

    const HEAD: &str = "suite: s\ntenant: demo\nuser: ana\n";

    #[test]
    fn a_suite_parses_with_defaults_appended_to_each_case() {
        let s = parse(&format!(
            "{HEAD}defaults:\n  assert:\n    - type: no-citation-outside-turn\ncases:\n  - name: a\n    question: why?\n    assert:\n      - type: contains\n        value: D1\n  - name: b\n    question: what?\n"
        ))
        .unwrap();
        assert_eq!(s.cases.len(), 2);
        assert_eq!(s.cases[0].assert.len(), 2);
        assert_eq!(s.cases[1].assert.len(), 1);
        assert_eq!(s.cases[1].line, 13);
        assert_eq!(s.seed, vec!["demo".to_string()]);
        assert!(s.file_hash.starts_with("blake3:"));
    }

    #[test]
    fn an_unknown_assertion_type_is_named_with_its_line() {
        let (line, _, msg) = err(&format!(
            "{HEAD}cases:\n  - name: a\n    question: q\n    assert:\n      - type: containz\n        value: x\n"
        ));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("unknown assertion type `containz`"), "{msg}");
    }

    #[test]
    fn an_unknown_key_and_a_yaml_syntax_error_point_at_the_place() {
        let (line, _, msg) = err(&format!(
            "{HEAD}cases:\n  - name: a\n    questoin: q\n    assert: []\n"
        ));
        assert_eq!(line, 6, "{msg}");
        assert!(msg.contains("questoin"), "{msg}");
        let (line, _, _) = err("suite: s\ntenant: [demo\nuser: x\n");
        assert!(line >= 2);
    }

    #[test]
    fn a_bad_regex_and_a_bad_threshold_are_refused() {
        let (line, _, msg) = err(&format!(
            "{HEAD}cases:\n  - name: a\n    question: q\n    assert:\n      - type: regex\n        value: '(unclosed'\n"
        ));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("regex"), "{msg}");
        let (line, _, msg) = err(&format!(
            "{HEAD}threshold: 2\ncases:\n  - name: a\n    question: q\n    assert: [{{type: outcome, value: answered}}]\n"
        ));
        assert_eq!(line, 4, "{msg}");
    }

    #[test]
    fn two_cases_with_one_name_are_refused_at_the_second() {
        let (line, _, msg) = err(&format!(
            "{HEAD}cases:\n  - name: a\n    question: q\n    assert: [{{type: outcome, value: answered}}]\n  - name: a\n    question: q\n    assert: [{{type: outcome, value: answered}}]\n"
        ));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("first at line 5"), "{msg}");
    }
}
