//! Property tests for the law language: the parser never panics, the printer and the parser
//! agree, evaluation keeps its fail-closed promises, and composition is a join (commutative,
//! associative, idempotent). The "never panics" property is what CI runs in place of the
//! cargo-fuzz target in `fuzz/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};
use ledger::law::{
    Action, ArithOp, Block, Clock, CompareOp, Composition, Duration, Expr, Law, Literal, Path,
    Term, Version, compose, evaluate, parse,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const RESERVED: &[&str] = &[
    "if", "then", "AND", "OR", "NOT", "in", "true", "false", "null",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "c", "now", "deadline_at", "quorum"])
            .prop_map(String::from),
        1 => "[A-Za-z_][A-Za-z0-9_]{0,8}",
    ]
    .prop_filter("reserved", |w| !RESERVED.contains(&w.as_str()))
}

fn path() -> impl Strategy<Value = Path> {
    (
        word(),
        prop::collection::vec(
            prop_oneof![word(), "[0-9]{1,3}", Just("count".into())],
            0..3,
        ),
    )
        .prop_map(|(first, rest)| Path(std::iter::once(first).chain(rest).collect()))
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        Just(Literal::Null),
        any::<bool>().prop_map(Literal::Bool),
        prop_oneof![
            any::<f64>(),
            -1000.0..1000.0f64,
            (0..100i32).prop_map(f64::from)
        ]
        .prop_filter("finite", |n| n.is_finite())
        .prop_map(Literal::Number),
        any::<String>().prop_map(Literal::String),
        prop_oneof![
            (-Duration::MAX_SECONDS..=Duration::MAX_SECONDS),
            (-200_000i64..200_000)
        ]
        .prop_map(|s| Literal::Duration(Duration::from_seconds(s).unwrap())),
        "2025-03-0[1-9]T0[0-9]:00:00Z".prop_map(Literal::String),
    ]
}

fn term() -> impl Strategy<Value = Term> {
    let leaf = prop_oneof![
        literal().prop_map(Term::Literal),
        path().prop_map(Term::Path)
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Term::List),
            (
                inner.clone(),
                prop::collection::vec(
                    (prop_oneof![Just(ArithOp::Add), Just(ArithOp::Sub)], inner),
                    1..3
                )
            )
                .prop_map(|(first, rest)| Term::Arith {
                    first: Box::new(first),
                    rest
                }),
        ]
    })
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    prop::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ])
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        (compare_op(), term(), term()).prop_map(|(op, left, right)| Expr::Compare {
            op,
            left,
            right
        }),
        (term(), term()).prop_map(|(item, set)| Expr::In { item, set }),
        term().prop_map(Expr::Test),
    ];
    leaf.prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["ops", "audit", "status", "true", "x_1"]).prop_map(String::from),
        any::<String>(),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Accept),
        any::<u32>().prop_map(|hours| Action::Hold { hours }),
        (0u32..4).prop_map(|hours| Action::Hold { hours }),
        text().prop_map(|reason| Action::Terminate { reason }),
        text().prop_map(|role| Action::Notify { role }),
        (text(), text()).prop_map(|(key, val)| Action::Tag { key, val }),
        Just(Action::AppendLedger),
        Just(Action::Permit),
        Just(Action::Deny),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (expr(), prop::collection::vec(action(), 1..5))
        .prop_map(|(condition, actions)| Block { condition, actions })
}

fn law() -> impl Strategy<Value = Law> {
    (
        "[A-Za-z_][A-Za-z0-9_-]{0,12}",
        (any::<u64>(), 0..20u64, 0..20u64),
        prop::option::of("[A-Za-z0-9_./:-]{1,12}"),
        prop::option::of(prop_oneof![
            Just(Clock::Realtime),
            "[A-Za-z][A-Za-z0-9_+/-]{0,15}".prop_map(|tz| Clock::Midnight { tz }),
        ]),
        prop::option::of(block()),
        prop::option::of(block()),
        prop::option::of(block()),
    )
        .prop_filter("at least one block", |l| {
            l.4.is_some() || l.5.is_some() || l.6.is_some()
        })
        .prop_map(
            |(id, (major, minor, patch), scope, clock, ok, doubt, not)| Law {
                id,
                version: Version {
                    major,
                    minor,
                    patch,
                },
                scope,
                clock,
                ok,
                doubt,
                not,
            },
        )
}

/// Fragments of law text, so random programs get past the header and into the grammar.
const VOCAB: &[&str] = &[
    "law",
    "a:1.0.0:",
    "scope:",
    "clock:",
    "midnight",
    "Europe/Paris",
    "realtime",
    "if",
    "ok",
    "doubt",
    "not",
    ":",
    "then:",
    "accept",
    "hold(hours=1)",
    "hold(",
    "hours",
    "=",
    "terminate",
    "(reason=x)",
    "tag(key=a,val=b)",
    "notify(role=ops)",
    "append_ledger",
    "permit",
    "deny",
    "(",
    ")",
    "[",
    "]",
    ",",
    "AND",
    "OR",
    "NOT",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "in",
    "true",
    "false",
    "null",
    "x",
    "x.y",
    "a.0",
    ".",
    "24h",
    "1h30m",
    "3y",
    "1.5",
    "42",
    "\"s\"",
    "'t'",
    "\"",
    "\\",
    "#",
    "\n",
    "\t",
    "é",
    "\u{0}",
];

fn soup() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(VOCAB), 0..60),
        prop::collection::vec(prop_oneof![Just(" "), Just(""), Just("\n")], 60),
    )
        .prop_map(|(header, words, gaps)| {
            let mut s = if header {
                "law a:1.0.0:\n".to_string()
            } else {
                String::new()
            };
            for (w, g) in words.iter().zip(gaps) {
                s.push_str(w);
                s.push_str(g);
            }
            s
        })
}

fn variables() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        "2025-03-0[1-9]T0[0-9]:00:00Z".prop_map(Value::from),
        "[a-z0-9]{0,3}h?".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "count", "0"]).prop_map(String::from),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c", "now", "deadline_at", "quorum"])
            .prop_map(String::from),
        value,
        0..6,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let small = prop_oneof![
        Just(Action::Accept),
        (0u32..4).prop_map(|hours| Action::Hold { hours }),
        prop::sample::select(vec!["a", "b"]).prop_map(|r| Action::Terminate { reason: r.into() }),
        prop::sample::select(vec!["ops", "audit"]).prop_map(|r| Action::Notify { role: r.into() }),
        prop::sample::select(vec!["x", "y"]).prop_map(|v| Action::Tag {
            key: "status".into(),
            val: v.into()
        }),
        Just(Action::AppendLedger),
        Just(Action::Permit),
        Just(Action::Deny),
    ];
    prop::collection::vec(small, 0..6)
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(src in any::<String>()) {
        let _ = parse(&src);
    }

    #[test]
    fn parse_never_panics_on_law_shaped_text(src in soup()) {
        if let Ok(law) = parse(&src) {
            // And whatever parses prints to text that reads back as the same law.
            let printed = law.to_string();
            prop_assert_eq!(parse(&printed).unwrap(), law, "{}", printed);
        }
    }

    #[test]
    fn errors_point_inside_the_text(src in soup()) {
        if let Err(e) = parse(&src) {
            let p = e.position();
            let lines = src.split('\n').count();
            prop_assert!(p.line >= 1 && (p.line as usize) <= lines, "{e} in {src:?}");
            let line = src.split('\n').nth(p.line as usize - 1).unwrap();
            prop_assert!(p.column >= 1 && (p.column as usize) <= line.chars().count() + 1, "{e}");
        }
    }

    #[test]
    fn printing_a_law_and_parsing_it_gives_the_same_law(law in law()) {
        let printed = law.to_string();
        match parse(&printed) {
            Ok(again) => prop_assert_eq!(again, law, "{}", printed),
            Err(e) => prop_assert!(false, "{e}\n{printed}"),
        }
    }

    #[test]
    fn a_decision_either_comes_from_a_block_or_fails_closed_to_doubt_without_actions(
        law in law(),
        vars in variables(),
        secs in 1_700_000_000i64..1_800_000_000,
    ) {
        let now = Utc.timestamp_opt(secs, 0).unwrap();
        let d = evaluate(&law, &vars, now);
        match &d.fail_closed {
            Some(_) => {
                prop_assert_eq!(d.triage, ledger::law::Triage::Doubt);
                prop_assert!(d.actions.is_empty());
            }
            None => prop_assert_eq!(&law.block(d.triage).unwrap().actions, &d.actions),
        }
        for m in &d.missing {
            prop_assert!(!d.variables.contains_key(m));
        }
        prop_assert_eq!(evaluate(&law, &vars, now), d);
    }

    #[test]
    fn composition_is_commutative(a in actions(), b in actions()) {
        prop_assert_eq!(compose([&a[..], &b[..]]), compose([&b[..], &a[..]]));
    }

    #[test]
    fn composition_is_associative(a in actions(), b in actions(), c in actions()) {
        let (a, b, c) = (Composition::of(&a), Composition::of(&b), Composition::of(&c));
        prop_assert_eq!(
            a.clone().join(b.clone()).join(c.clone()),
            a.join(b.join(c))
        );
    }

    #[test]
    fn composition_is_idempotent(a in actions()) {
        let once = Composition::of(&a);
        prop_assert_eq!(once.clone().join(once.clone()), once.clone());
        prop_assert_eq!(compose([&a[..], &a[..]]), once);
    }

    #[test]
    fn composing_decisions_is_composing_their_actions_in_any_grouping(a in actions(), b in actions()) {
        let joined: Vec<Action> = a.iter().chain(&b).cloned().collect();
        prop_assert_eq!(Composition::of(&joined), compose([&a[..], &b[..]]));
    }
}

#[test]
fn the_json_shape_of_a_composition_is_stable() {
    let c = compose([&[Action::Hold { hours: 2 }, Action::AppendLedger][..]]);
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        json!({"state": {"action": "hold", "hours": 2}, "tags": [], "notify": [], "append_ledger": true})
    );
}
