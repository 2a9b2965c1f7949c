//! The law language by example: the seed's laws parse, errors point at the right place, the
//! evaluator decides in triage order and fails closed, and actions compose as DESIGN §6 says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use ledger::law::{
    Access, Action, Clock, Composition, EvalError, FailClosed, ParseError, Position, StateChange,
    Tag, Triage, Version, compose, evaluate, parse,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/laws")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn at(line: u32, column: u32) -> Position {
    Position { line, column }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 0, 0, 0).unwrap()
}

fn error_of(src: &str) -> ParseError {
    parse(src).expect_err("should not parse")
}

// ---- parsing ---------------------------------------------------------------------------------

#[test]
fn every_example_law_in_the_seed_parses_and_reads_back_from_its_canonical_text() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/laws");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "law") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let law = parse(&src).unwrap_or_else(|e| panic!("{}:{e}", path.display()));
        let printed = law.to_string();
        assert_eq!(parse(&printed).unwrap(), law, "{printed}");
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn midnight_deadline_has_its_header_and_three_blocks() {
    let law = parse(&fixture("midnight_deadline.law")).unwrap();
    assert_eq!(law.id, "midnight_deadline");
    assert_eq!(
        law.version,
        Version {
            major: 1,
            minor: 0,
            patch: 0
        }
    );
    assert_eq!(law.scope.as_deref(), Some("deliverable"));
    assert_eq!(
        law.clock,
        Some(Clock::Midnight {
            tz: "Europe/Paris".into()
        })
    );
    let blocks: Vec<Triage> = law.blocks().map(|(t, _)| t).collect();
    assert_eq!(blocks, Triage::ALL);
    assert_eq!(
        law.doubt.as_ref().unwrap().actions,
        vec![
            Action::Hold { hours: 24 },
            Action::Notify { role: "ops".into() },
            Action::Tag {
                key: "status".into(),
                val: "under_review".into()
            },
            Action::AppendLedger,
        ]
    );
}

#[test]
fn the_canonical_text_of_midnight_deadline_is_the_seed_text() {
    let src = fixture("midnight_deadline.law");
    assert_eq!(parse(&src).unwrap().to_string(), src);
}

#[test]
fn a_law_without_scope_or_clock_and_with_one_block_parses() {
    let law = parse(&fixture("review_deadline.law")).unwrap();
    assert_eq!(law.scope, None);
    assert_eq!(law.clock, None);
    assert!(law.ok.is_none() && law.doubt.is_none() && law.not.is_some());
    assert_eq!(
        law.not.unwrap().condition.to_string(),
        "now >= created_at + 1d AND status != \"reviewed\""
    );
}

#[test]
fn conditions_and_action_lists_may_run_over_several_lines() {
    let law = parse(&fixture("auth_break_glass.law")).unwrap();
    assert_eq!(law.clock, Some(Clock::Realtime));
    let ok = law.ok.unwrap();
    assert_eq!(
        ok.condition.to_string(),
        "requester.role in [\"ops\", \"security\"] AND approvers.count >= 2 AND ttl <= 1d"
    );
    assert_eq!(ok.actions.len(), 4);
    assert_eq!(ok.actions[0], Action::Permit);
}

#[test]
fn a_bare_midnight_clock_means_europe_paris() {
    let law = parse("law a:1.0.0:\nclock: midnight\nif not: true\nthen: deny\n").unwrap();
    assert_eq!(
        law.clock,
        Some(Clock::Midnight {
            tz: "Europe/Paris".into()
        })
    );
}

#[test]
fn precedence_is_not_over_and_over_or() {
    let law = parse("law a:1.0.0:\nif ok: NOT a OR b AND c\nthen: accept").unwrap();
    assert_eq!(
        serde_json::to_value(&law.ok.unwrap().condition).unwrap(),
        json!({"or": [
            {"not": {"test": {"path": "a"}}},
            {"and": [{"test": {"path": "b"}}, {"test": {"path": "c"}}]},
        ]})
    );
}

#[test]
fn parentheses_group_conditions_and_values_alike() {
    let law =
        parse("law a:1.0.0:\nif ok: NOT (a OR b) AND (now - deadline_at) > 24h\nthen: accept")
            .unwrap();
    assert_eq!(
        law.ok.unwrap().condition.to_string(),
        "NOT (a OR b) AND now - deadline_at > 1d"
    );
}

#[test]
fn comments_and_blank_lines_are_ignored() {
    let src = "# a comment\nlaw a:1.0.0: # trailing\nscope: x # here too\n\n\nif ok: a # why\nthen: accept\n";
    assert_eq!(parse(src).unwrap().scope.as_deref(), Some("x"));
}

#[test]
fn a_law_serializes_for_a_span() {
    let law = parse(&fixture("review_deadline.law")).unwrap();
    let v = serde_json::to_value(&law).unwrap();
    assert_eq!(v["id"], "review_deadline");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(
        v["not"]["actions"][0],
        json!({"action": "terminate", "reason": "deadline_passed"})
    );
    assert_eq!(
        v["not"]["condition"]["and"][0]["compare"]["right"]["arith"]["rest"][0],
        json!(["add", {"literal": {"duration": "1d"}}])
    );
}

// ---- parse errors ----------------------------------------------------------------------------

#[test]
fn an_unknown_action_is_named_with_its_position() {
    let e = error_of("law a:1.0.0:\nif ok: a\nthen: accept, hodl\n");
    assert_eq!(
        e.to_string(),
        "3:15: expected an action such as accept or hold(hours=N), found \"hodl\""
    );
    assert_eq!(e.position(), at(3, 15));
}

#[test]
fn a_missing_then_points_at_what_came_instead() {
    let e = error_of("law a:1.0.0:\nif ok: a == 1\nif not: true\nthen: deny");
    assert_eq!(
        e.to_string(),
        "3:1: expected `then:` or an operator such as AND, found \"if\""
    );
}

#[test]
fn lower_case_operators_get_a_hint() {
    let e = error_of("law a:1.0.0:\nif ok: a and b\nthen: accept");
    assert!(e.to_string().contains("written in capitals"), "{e}");
    assert_eq!(e.position(), at(2, 10));
}

#[test]
fn a_bad_version_points_at_the_version() {
    let e = error_of("law midnight_deadline:1.0:\nif ok: a\nthen: accept");
    assert_eq!(
        e,
        ParseError::InvalidVersion {
            at: at(1, 23),
            text: "1.0".into()
        }
    );
}

#[test]
fn a_bad_clock_is_refused() {
    let e = error_of("law a:1.0.0:\nclock: at noon\nif ok: a\nthen: accept");
    assert!(
        matches!(e, ParseError::InvalidClock { at: p, .. } if p == at(2, 8)),
        "{e:?}"
    );
}

#[test]
fn a_second_block_of_the_same_kind_names_the_first() {
    let e = error_of("law a:1.0.0:\nif ok: a\nthen: accept\nif ok: b\nthen: accept");
    assert_eq!(
        e,
        ParseError::Duplicate {
            at: at(4, 1),
            what: "if ok:".into(),
            first: at(2, 1)
        }
    );
}

#[test]
fn a_law_needs_a_block() {
    assert!(matches!(
        error_of("law a:1.0.0:\nscope: x\n"),
        ParseError::NoBlocks { .. }
    ));
}

#[test]
fn a_missing_action_argument_is_named() {
    let e = error_of("law a:1.0.0:\nif ok: a\nthen: tag(key=status)");
    assert_eq!(e.to_string(), "3:7: tag(...) needs the argument `val`");
}

#[test]
fn hold_takes_whole_hours() {
    let e = error_of("law a:1.0.0:\nif ok: a\nthen: hold(hours=1.5)");
    assert_eq!(
        e.to_string(),
        "3:18: expected a whole number of hours, found \"1.5\""
    );
}

#[test]
fn an_unterminated_string_is_reported_where_it_starts() {
    let e = error_of("law a:1.0.0:\nif ok: s == \"abc\nthen: accept");
    assert_eq!(e, ParseError::UnterminatedString { at: at(2, 13) });
}

#[test]
fn an_unknown_duration_unit_is_refused() {
    let e = error_of("law a:1.0.0:\nif ok: ttl < 3y\nthen: accept");
    assert!(
        matches!(e, ParseError::InvalidDuration { at: p, .. } if p == at(2, 14)),
        "{e:?}"
    );
}

#[test]
fn deep_nesting_is_refused_rather_than_overflowing_the_stack() {
    let src = format!(
        "law a:1.0.0:\nif ok: {}a{}\nthen: accept",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(matches!(error_of(&src), ParseError::TooDeep { .. }));
    let nots = format!(
        "law a:1.0.0:\nif ok: {}a\nthen: accept",
        "NOT ".repeat(10_000)
    );
    assert!(matches!(error_of(&nots), ParseError::TooDeep { .. }));
}

#[test]
fn long_chains_parse_flat() {
    let chain = vec!["a"; 50_000].join(" AND ");
    let law = parse(&format!("law a:1.0.0:\nif ok: {chain}\nthen: accept")).unwrap();
    assert!(
        matches!(&law.ok.unwrap().condition, ledger::law::Expr::And(items) if items.len() == 50_000)
    );
}

// ---- evaluation ------------------------------------------------------------------------------

fn midnight() -> ledger::law::Law {
    parse(&fixture("midnight_deadline.law")).unwrap()
}

fn contract(accepted: Value, approvals: usize, evidence_missing: Value) -> Value {
    json!({
        "accepted": accepted,
        "approvals": vec![json!({"by": "x"}); approvals],
        "quorum": 2,
        "deadline_at": "2025-03-09T23:00:00Z",
        "evidence": {"missing": evidence_missing},
    })
}

#[test]
fn an_accepted_deliverable_is_ok_and_accepted() {
    let d = evaluate(&midnight(), &contract(json!(true), 0, json!(false)), now());
    assert_eq!(d.triage, Triage::Ok);
    assert_eq!(d.fail_closed, None);
    assert_eq!(d.actions[0], Action::Accept);
}

#[test]
fn a_quorum_of_approvals_is_as_good_as_acceptance() {
    let d = evaluate(&midnight(), &contract(json!(false), 2, json!(false)), now());
    assert_eq!(d.triage, Triage::Ok);
    assert_eq!(d.variables["approvals.count"], json!(2));
}

#[test]
fn a_past_deadline_with_missing_evidence_is_doubt_with_a_hold() {
    let d = evaluate(&midnight(), &contract(json!(false), 0, json!(true)), now());
    assert_eq!(d.triage, Triage::Doubt);
    assert_eq!(d.fail_closed, None);
    assert_eq!(d.actions[0], Action::Hold { hours: 24 });
}

#[test]
fn a_past_deadline_with_evidence_in_is_not_and_terminates() {
    let d = evaluate(&midnight(), &contract(json!(false), 0, json!(false)), now());
    assert_eq!(d.triage, Triage::Not);
    assert_eq!(
        d.actions[0],
        Action::Terminate {
            reason: "deadline_passed".into()
        }
    );
}

#[test]
fn the_decision_lists_every_variable_it_read() {
    let d = evaluate(&midnight(), &contract(json!(false), 0, json!(false)), now());
    let read: Vec<&str> = d.variables.keys().map(String::as_str).collect();
    assert_eq!(
        read,
        [
            "accepted",
            "approvals.count",
            "deadline_at",
            "evidence.missing",
            "now",
            "quorum"
        ]
    );
    assert_eq!(d.variables["now"], json!("2025-03-10T00:00:00Z"));
    assert_eq!(d.variables["deadline_at"], json!("2025-03-09T23:00:00Z"));
}

#[test]
fn before_the_deadline_nothing_holds_and_the_decision_fails_closed_to_doubt() {
    let mut c = contract(json!(false), 0, json!(false));
    c["deadline_at"] = json!("2025-03-11T00:00:00Z");
    let d = evaluate(&midnight(), &c, now());
    assert_eq!(d.triage, Triage::Doubt);
    assert_eq!(d.fail_closed, Some(FailClosed::NoBlockHeld));
    assert!(d.actions.is_empty());
}

#[test]
fn a_missing_field_that_could_change_the_answer_fails_closed_to_doubt() {
    let mut c = contract(json!(false), 0, json!(false));
    c.as_object_mut().unwrap().remove("quorum");
    let d = evaluate(&midnight(), &c, now());
    assert_eq!(d.triage, Triage::Doubt);
    assert_eq!(
        d.fail_closed,
        Some(FailClosed::Undecidable {
            block: Triage::Ok,
            error: EvalError::Missing {
                path: "quorum".into()
            }
        })
    );
    assert!(d.actions.is_empty());
    assert!(d.missing.contains("quorum"));
}

#[test]
fn a_missing_field_that_cannot_change_the_answer_does_not_block_it() {
    let mut c = contract(json!(true), 0, json!(false));
    c.as_object_mut().unwrap().remove("quorum");
    let d = evaluate(&midnight(), &c, now());
    assert_eq!(d.triage, Triage::Ok);
    assert_eq!(d.fail_closed, None);
}

#[test]
fn ill_typed_data_fails_closed_instead_of_terminating() {
    // "no" is not false: a poisoned field must not let the `if not:` block run.
    let d = evaluate(&midnight(), &contract(json!("no"), 0, json!(false)), now());
    assert_eq!(d.triage, Triage::Doubt);
    assert!(matches!(
        d.fail_closed,
        Some(FailClosed::Undecidable {
            block: Triage::Ok,
            error: EvalError::Incomparable { .. }
        })
    ));
}

#[test]
fn a_deadline_that_is_not_a_timestamp_fails_closed() {
    let mut c = contract(json!(false), 0, json!(false));
    c["deadline_at"] = json!("tomorrow");
    let d = evaluate(&midnight(), &c, now());
    assert_eq!(d.triage, Triage::Doubt);
    // The doubt block is false whatever the deadline (evidence is in); `if not:` is undecidable.
    assert!(matches!(
        d.fail_closed,
        Some(FailClosed::Undecidable {
            block: Triage::Not,
            error: EvalError::NotATimestamp { .. }
        })
    ));
}

#[test]
fn now_is_the_injected_instant_not_a_variable() {
    let mut c = contract(json!(false), 0, json!(false));
    c["now"] = json!("2000-01-01T00:00:00Z");
    let d = evaluate(&midnight(), &c, now());
    assert_eq!(d.triage, Triage::Not);
}

#[test]
fn durations_add_to_times_and_compare_with_time_differences() {
    let review = parse(&fixture("review_deadline.law")).unwrap();
    let fresh = json!({"created_at": "2025-03-09T12:00:00+01:00", "status": "open"});
    let d = evaluate(&review, &fresh, now());
    assert_eq!(d.fail_closed, Some(FailClosed::NoBlockHeld));
    let old = json!({"created_at": "2025-03-08T12:00:00Z", "status": "open"});
    assert_eq!(evaluate(&review, &old, now()).triage, Triage::Not);
    let reviewed = json!({"created_at": "2025-03-08T12:00:00Z", "status": "reviewed"});
    assert_eq!(
        evaluate(&review, &reviewed, now()).fail_closed,
        Some(FailClosed::NoBlockHeld)
    );

    let since = parse("law a:1.0.0:\nif not: now - deadline_at > 24h\nthen: deny").unwrap();
    let late = json!({"deadline_at": "2025-03-08T23:59:59Z"});
    let just = json!({"deadline_at": "2025-03-09T00:00:00Z"});
    assert_eq!(evaluate(&since, &late, now()).triage, Triage::Not);
    assert_eq!(evaluate(&since, &just, now()).triage, Triage::Doubt);
}

#[test]
fn membership_and_durations_decide_the_break_glass_law() {
    let law = parse(&fixture("auth_break_glass.law")).unwrap();
    let two = json!({"requester": {"role": "ops"}, "approvers": ["a", "b"], "ttl": "12h"});
    let d = evaluate(&law, &two, now());
    assert_eq!(d.triage, Triage::Ok);
    assert_eq!(d.actions[0], Action::Permit);
    let one = json!({"requester": {"role": "security"}, "approvers": ["a"], "ttl": "12h"});
    assert_eq!(evaluate(&law, &one, now()).triage, Triage::Doubt);
    let stranger = json!({"requester": {"role": "intern"}, "approvers": [], "ttl": "1h"});
    let d = evaluate(&law, &stranger, now());
    assert_eq!(d.triage, Triage::Not);
    assert_eq!(d.actions[0], Action::Deny);
}

#[test]
fn a_bare_variable_must_be_a_boolean() {
    let law = parse(&fixture("escalation.law")).unwrap();
    let yes = json!({"deadline_passed": true, "no_response": true});
    assert_eq!(evaluate(&law, &yes, now()).triage, Triage::Not);
    let poisoned = json!({"deadline_passed": 1, "no_response": true});
    let d = evaluate(&law, &poisoned, now());
    assert!(matches!(
        d.fail_closed,
        Some(FailClosed::Undecidable {
            error: EvalError::NotABoolean { .. },
            ..
        })
    ));
}

#[test]
fn null_equals_only_null_and_missing_is_not_null() {
    let law = parse("law a:1.0.0:\nif ok: guarantor.confirmed_at == null\nthen: accept").unwrap();
    let null = json!({"guarantor": {"confirmed_at": null}});
    assert_eq!(evaluate(&law, &null, now()).triage, Triage::Ok);
    let set = json!({"guarantor": {"confirmed_at": "2025-01-01T00:00:00Z"}});
    assert_eq!(
        evaluate(&law, &set, now()).fail_closed,
        Some(FailClosed::NoBlockHeld)
    );
    let absent = json!({"guarantor": {}});
    assert!(matches!(
        evaluate(&law, &absent, now()).fail_closed,
        Some(FailClosed::Undecidable { .. })
    ));
}

#[test]
fn paths_index_arrays_and_reach_nested_contract_fields() {
    let law = parse(
        "law a:1.0.0:\nif ok: contract.approvals.1.by == \"bea\" AND contract.guarantor.confirmed_at < now\nthen: accept",
    )
    .unwrap();
    let vars = json!({"contract": {
        "approvals": [{"by": "ana"}, {"by": "bea"}],
        "guarantor": {"confirmed_at": "2025-03-01T10:00:00Z"},
    }});
    let d = evaluate(&law, &vars, now());
    assert_eq!(d.triage, Triage::Ok);
    assert_eq!(d.variables["contract.approvals.1.by"], json!("bea"));
}

#[test]
fn a_decision_serializes_with_its_reason_for_failing_closed() {
    let d = evaluate(&midnight(), &json!({}), now());
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["triage"], "doubt");
    assert_eq!(v["fail_closed"]["reason"], "undecidable");
    assert_eq!(v["fail_closed"]["error"]["kind"], "missing");
    assert_eq!(
        v["missing"],
        json!(["accepted", "approvals.count", "quorum"])
    );
}

// ---- composition -----------------------------------------------------------------------------

fn tag(key: &str, val: &str) -> Action {
    Action::Tag {
        key: key.into(),
        val: val.into(),
    }
}

#[test]
fn terminate_beats_accept_beats_hold() {
    let hold = [Action::Hold { hours: 24 }];
    let accept = [Action::Accept];
    let term = [Action::Terminate {
        reason: "timeout".into(),
    }];
    assert_eq!(
        compose([&hold[..], &accept[..]]).state,
        Some(StateChange::Accept)
    );
    assert_eq!(
        compose([&accept[..], &term[..], &hold[..]]).state,
        Some(StateChange::Terminate {
            reasons: ["timeout".to_string()].into()
        })
    );
}

#[test]
fn holds_take_the_longest_duration() {
    let a = [Action::Hold { hours: 1 }];
    let b = [Action::Hold { hours: 48 }];
    assert_eq!(
        compose([&a[..], &b[..]]).state,
        Some(StateChange::Hold { hours: 48 })
    );
}

#[test]
fn tags_and_notifications_are_unions_and_append_ledger_happens_once() {
    let a = [
        tag("status", "under_review"),
        Action::Notify { role: "ops".into() },
        Action::AppendLedger,
    ];
    let b = [
        tag("escalated", "true"),
        Action::Notify { role: "ops".into() },
        Action::Notify {
            role: "manager".into(),
        },
        Action::AppendLedger,
    ];
    let c = compose([&a[..], &b[..]]);
    assert_eq!(c.tags.len(), 2);
    assert!(c.tags.contains(&Tag {
        key: "escalated".into(),
        val: "true".into()
    }));
    assert_eq!(
        c.notify.iter().map(String::as_str).collect::<Vec<_>>(),
        ["manager", "ops"]
    );
    assert!(c.append_ledger);
}

#[test]
fn deny_wins_over_permit() {
    let p = [Action::Permit];
    let d = [Action::Deny];
    assert_eq!(compose([&p[..], &d[..]]).access, Some(Access::Deny));
    assert_eq!(compose([&d[..], &p[..]]).access, Some(Access::Deny));
    assert_eq!(compose([&p[..]]).access, Some(Access::Permit));
}

#[test]
fn composing_nothing_does_nothing() {
    assert_eq!(compose([]), Composition::default());
}
