//! What an answer must rest on (issue 12). Small models answer ledger questions from nothing
//! — "there are no contracts on hold", "the ledger has been updated" — at confidence 0.95 and
//! with no tool call; the schema alone cannot tell. The agent enforces three rules with the
//! pure functions here:
//!
//! 1. **A question about the ledger needs evidence.** [`asks_about_ledger`] decides it from the
//!    user's message alone, before the model speaks: the message names a ledger thing — a
//!    span id (UUID), a contract-like name (`D1`, `AB12`: letters then digits), or a word of
//!    the ledger's vocabulary (contracts, laws, spans, decisions, deadlines, guarantors,
//!    quorum, amendments, proposals, holds, terminations, what-ifs, changes such as extend or
//!    delete; in English and Portuguese). Everything else — greetings, thanks, "what can you
//!    do?", a poem — is a meta message and gets a plain answer. An answer to a ledger question
//!    with confidence ≥ 0.6 needs a tool call that ran without error in the turn (citations
//!    can only come from one); otherwise the model is asked once to call a tool, and then the
//!    answer is replaced by a decline ([`unsupported_answer`]).
//! 2. **`actions[]` are proposals of this turn.** Every action names the `proposal_id` a tool
//!    returned in this turn ([`action_errors`]).
//! 3. **No change is claimed that was not proposed.** Text that says something was changed
//!    ("has been updated", "I deleted", "foi prorrogado", …; [`claims_change`]) is refused
//!    unless the turn made a proposal. Facts about past decisions ("D1 was terminated at
//!    midnight") are not claims of a change made now and stay allowed.
//!
//! 4. **An answer cites what it rests on.** A confident answer to a ledger question that
//!    cites none of the spans this turn's tools returned is asked once to cite them
//!    ([`citation_repair`] lists the ids); if it still cites nothing, its confidence is capped
//!    at [`UNCITED_CONFIDENCE`], below the escalation line, so a reviewer sees it.
//!
//! The rules are word lists, not a model: they err towards asking for evidence (a message
//! that merely mentions "contract" is a ledger question) and are documented in
//! `prompts/README.md`.

use std::collections::HashSet;

use serde_json::{Value, json};
use uuid::Uuid;

/// The confidence an unsupported answer is capped to: below the escalation line (0.6).
pub const UNSUPPORTED_CONFIDENCE: f64 = 0.3;

/// The confidence an answer that cites nothing after being asked to is capped to.
pub const UNCITED_CONFIDENCE: f64 = 0.5;

/// Most ids listed in a citation repair: enough for any answer, short for a small model.
const CITATION_REPAIR_IDS: usize = 12;

/// What the model is told when its answer cites nothing although the turn's tools returned
/// spans: the ids it may cite, in the order they were returned.
pub fn citation_repair(citable: &[Uuid]) -> String {
    let ids: Vec<String> = citable
        .iter()
        .take(CITATION_REPAIR_IDS)
        .map(Uuid::to_string)
        .collect();
    format!(
        "Your answer cites nothing. Answer again with the same JSON object, putting in `citations` \
         the ids of the spans from this turn's tool results that support it (ids returned: {}). \
         If none of them supports the answer, set `confidence` below 0.6.",
        ids.join(", ")
    )
}

/// What an unsupported answer says instead of the model's text.
pub const UNSUPPORTED_TEXT: &str = "I could not check this against the ledger: no tool returned \
     evidence in this turn, so I will not answer it from guesswork.";

/// The question back an unsupported answer asks when the model asked none.
pub const UNSUPPORTED_QUESTION: &str =
    "Could you name the contract, law or span you mean, so I can look it up?";

/// Word stems (prefixes) of the ledger's vocabulary. A word of the message that starts with
/// one of them makes it a ledger question.
#[rustfmt::skip]
const STEMS: &[&str] = &[
    // English
    "contract", "agreement", "obligation", "ledger", "span", "decision", "decided", "deadline",
    "guarantor", "witness", "quorum", "approv", "amend", "propos", "terminat", "simulat",
    "redact", "triage", "midnight", "evidence", "extend", "extens", "postpon", "renew",
    "cancel", "delet", "updat", "modif", "revok", "happen", "histor", "signed", "signature",
    "parties", "penalt", "expir", "overdue", "breach",
    // Portuguese
    "contrat", "acordo", "obrigaç", "obrigac", "decis", "decid", "prazo", "fiador", "testemunh",
    "aprov", "alter", "propost", "rescind", "rescis", "simul", "prorrog", "apag", "exclu",
    "atualiz", "cancel", "aconte", "histór", "assinad", "multa", "venc",
];

/// Whole words of the ledger's vocabulary (too short or too common to match as prefixes).
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "law", "laws", "lei", "leis", "party", "hold", "held", "holds", "void", "accepted",
    "terminated", "open", "quorum", "change", "changed", "changes", "delete", "remove",
    "removed", "seq", "trace", "parte", "partes", "mudar", "mude",
];

/// Phrases that make a message a ledger question on their own.
const PHRASES: &[&str] = &["what if", "e se"];

/// Lower-cased words: letters, digits and apostrophes (`didn't` stays one word).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’' || c == '-'))
        .map(|w| {
            w.trim_matches(|c| c == '\'' || c == '’' || c == '-')
                .to_lowercase()
                .replace('’', "'")
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// `D1`, `d12`, `AB3`: one to three letters, then digits (how contracts are named).
fn contract_like(word: &str) -> bool {
    let letters = word.chars().take_while(char::is_ascii_alphabetic).count();
    let rest = &word[letters..];
    (1..=3).contains(&letters) && !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
}

/// Does this message ask about the ledger (see the module doc for the rule)?
pub fn asks_about_ledger(message: &str) -> bool {
    if message
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .any(|w| w.len() == 36 && Uuid::parse_str(w).is_ok())
    {
        return true;
    }
    let ws = words(message);
    let joined = format!(" {} ", ws.join(" "));
    if PHRASES.iter().any(|p| joined.contains(&format!(" {p} "))) {
        return true;
    }
    ws.iter().any(|w| {
        contract_like(w) || WORDS.contains(&w.as_str()) || STEMS.iter().any(|s| w.starts_with(s))
    })
}

/// Past participles of changes a turn could claim to have made.
#[rustfmt::skip]
const CHANGED: &[&str] = &[
    "updated", "deleted", "extended", "changed", "modified", "removed", "applied", "amended",
    "cancelled", "canceled", "renewed", "postponed", "revoked", "rescheduled", "erased",
    // Portuguese (masculine and feminine)
    "atualizado", "atualizada", "apagado", "apagada", "excluído", "excluída", "excluido",
    "excluida", "prorrogado", "prorrogada", "alterado", "alterada", "removido", "removida",
    "cancelado", "cancelada", "modificado", "modificada",
];

/// First-person past tenses ("I updated", "I've extended").
#[rustfmt::skip]
const DID: &[&str] = &[
    "updated", "deleted", "extended", "changed", "modified", "removed", "applied", "amended",
    "cancelled", "canceled", "renewed", "postponed", "revoked", "rescheduled", "erased", "set",
    // Portuguese first person
    "atualizei", "apaguei", "excluí", "exclui", "prorroguei", "alterei", "removi", "cancelei",
    "modifiquei",
];

/// Does this text say that a change was made (rather than proposed)? "has been updated", "was
/// deleted"-style passives with `has/have/had been`, "is now extended", "I updated", "I've
/// deleted", "foi prorrogado", "atualizei". Plain past facts ("D1 was terminated") do not
/// count: they describe decisions the ledger records.
pub fn claims_change(text: &str) -> bool {
    let ws = words(text);
    let at = |i: usize| ws.get(i).map_or("", String::as_str);
    for i in 0..ws.len() {
        let w = at(i);
        let next = at(i + 1);
        let after = at(i + 2);
        let changed = |x: &str| CHANGED.contains(&x);
        // has/have/had been X · is/are now X
        if matches!(w, "has" | "have" | "had") && next == "been" && changed(after) {
            return true;
        }
        if matches!(w, "is" | "are") && next == "now" && changed(after) {
            return true;
        }
        // I X · I have X · I've X · we X · we have X
        if matches!(w, "i" | "we")
            && (DID.contains(&next) || (next == "have" && DID.contains(&after)))
        {
            return true;
        }
        if matches!(w, "i've" | "we've") && DID.contains(&next) {
            return true;
        }
        // Portuguese: foi/foram X, está/estão X; a bare first-person verb
        if matches!(w, "foi" | "foram" | "está" | "estão" | "esta" | "estao") && changed(next) {
            return true;
        }
        if matches!(
            w,
            "atualizei"
                | "apaguei"
                | "excluí"
                | "prorroguei"
                | "alterei"
                | "removi"
                | "cancelei"
                | "modifiquei"
        ) {
            return true;
        }
    }
    false
}

/// [`claims_change`], and for an answer that cites nothing also "was/were X": "The deadline of
/// D1 was extended by 3 days." with no citation is a change the model made up (seen from
/// Qwen2.5-1.5B asked to extend a deadline), while a cited one reports an amendment the ledger
/// holds.
pub fn claims_unmade_change(text: &str, cites_something: bool) -> bool {
    if claims_change(text) {
        return true;
    }
    if cites_something {
        return false;
    }
    let ws = words(text);
    ws.windows(2).any(|w| {
        matches!(w[0].as_str(), "was" | "were" | "foi" | "foram")
            && CHANGED.contains(&w[1].as_str())
    }) || ws.windows(3).any(|w| {
        matches!(w[0].as_str(), "was" | "were")
            && matches!(w[1].as_str(), "just" | "successfully" | "now")
            && CHANGED.contains(&w[2].as_str())
    })
}

/// Stems of a request to delete or erase something, which an append-only ledger never does.
#[rustfmt::skip]
const DELETE_STEMS: &[&str] = &[
    "delet", "remov", "eras", "destroy", "purg", "wipe", "apag", "exclu", "elimin", "remova",
];

/// Stems of a request to change a contract (what `propose_amendment` is for).
#[rustfmt::skip]
const CHANGE_STEMS: &[&str] = &[
    "extend", "extens", "postpon", "delay", "amend", "chang", "modif", "updat", "renam", "rais",
    "lower", "increas", "decreas", "move", "push", "shorten", "reduc", "propos",
    "prorrog", "alter", "mud", "adi", "atualiz", "aument", "diminu", "reduz", "propo",
];

/// Words that open a question about how things are, not a request to change them.
#[rustfmt::skip]
const QUESTION_WORDS: &[&str] = &[
    "what", "which", "who", "whom", "whose", "when", "why", "where", "how", "is", "are", "was",
    "were", "did", "does", "do", "list", "show",
    "que", "qual", "quais", "quem", "quando", "porque", "porquê", "onde", "como", "o",
];

/// Does the message ask to delete or erase something ("delete D1", "apaga o D1")?
pub fn asks_to_delete(message: &str) -> bool {
    words(message)
        .iter()
        .any(|w| DELETE_STEMS.iter().any(|s| w.starts_with(s)))
}

/// Is the message a question about how things are, with no word of a change in it ("what
/// happened at the last midnight?")? A proposal made in answer to one is a model's invention:
/// Qwen2.5-1.5B proposed a new title and quorum for D1 when asked what happened. A short reply
/// in a conversation ("yes, do it") is not such a question.
pub fn asks_no_change(message: &str) -> bool {
    let ws = words(message);
    let question = message.trim_end().ends_with('?')
        || ws
            .first()
            .is_some_and(|w| QUESTION_WORDS.contains(&w.as_str()));
    question
        && !ws
            .iter()
            .any(|w| CHANGE_STEMS.iter().any(|s| w.starts_with(s)) || w == "set")
}

/// Errors of `actions[]`: each action must name a proposal this turn's tools created.
pub fn action_errors(answer: &Value, proposals: &[Uuid]) -> Vec<String> {
    let made: HashSet<Uuid> = proposals.iter().copied().collect();
    let Some(actions) = answer.get("actions").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        match a.get("proposal_id").and_then(Value::as_str) {
            None => errors.push(format!(
                "/actions/{i}: an action must name the proposal_id a propose_amendment call returned in this turn{}",
                if made.is_empty() { "; no proposal was made in this turn, so `actions` must be empty" } else { "" }
            )),
            Some(id) if id.parse::<Uuid>().is_ok_and(|u| made.contains(&u)) => {}
            Some(id) => errors.push(format!(
                "/actions/{i}/proposal_id: {id} is not a proposal made in this turn{}",
                if made.is_empty() { "; no proposal was made, so `actions` must be empty" } else { "" }
            )),
        }
    }
    errors
}

/// The decline shown instead of an answer that needed evidence and had none: the model's own
/// text is dropped (it may be a fabrication), its question back kept, its confidence capped.
pub fn unsupported_answer(draft: &Value, tool_use_count: usize) -> Value {
    let question = draft
        .get("follow_up_question")
        .and_then(Value::as_str)
        .filter(|q| !q.trim().is_empty())
        .unwrap_or(UNSUPPORTED_QUESTION);
    let confidence = draft
        .get("confidence")
        .and_then(Value::as_f64)
        .map_or(UNSUPPORTED_CONFIDENCE, |c| c.min(UNSUPPORTED_CONFIDENCE));
    json!({
        "text": UNSUPPORTED_TEXT,
        "confidence": confidence,
        "follow_up_question": question,
        "actions": [],
        "citations": [],
        "telemetry": {"tool_use_count": tool_use_count},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_with_no_change_in_it_is_not_a_change_request() {
        for m in [
            "what happened at the last midnight?",
            "who approved D5?",
            "which contracts would be held?",
            "Porque é que o D1 foi terminado?",
        ] {
            assert!(asks_no_change(m), "{m}");
        }
        for m in [
            "extend D1's deadline by 3 days",
            "can you extend D1 by 3 days?",
            "what if we postpone D3?",
            "set the quorum of D5 to 3",
            "yes, do it",
            "prorroga o prazo do D1 por 3 dias",
        ] {
            assert!(!asks_no_change(m), "{m}");
        }
        assert!(asks_to_delete("delete D1"));
        assert!(asks_to_delete("apaga o contrato D1"));
        assert!(!asks_to_delete("why was D1 terminated?"));
    }

    #[test]
    fn ledger_questions_are_told_from_meta_messages() {
        for q in [
            "which contracts are on hold?",
            "extend the deadline for D1 by 3 days",
            "delete D1",
            "what if the quorum were 3?",
            "which contracts would change if the quorum were at least 3?",
            "show span 0190f0b4-8c4e-7d2a-9f3e-2b1c0d9e8f7a",
            "what happened yesterday?",
            "porque é que o contrato D2 foi rescindido?",
            "qual é o prazo do contrato?",
        ] {
            assert!(asks_about_ledger(q), "{q}");
        }
        for q in [
            "hi",
            "hello!",
            "what can you do?",
            "who are you?",
            "thanks",
            "write me a poem about bread",
            "olá, bom dia",
            "help",
        ] {
            assert!(!asks_about_ledger(q), "{q}");
        }
    }

    #[test]
    fn claims_of_a_change_are_told_from_facts_and_proposals() {
        for t in [
            "The ledger has been updated.",
            "D1 has been deleted.",
            "The deadline is now extended to 2026-12-10.",
            "I extended the deadline of D1.",
            "I've deleted D1 for you.",
            "We have cancelled the contract.",
            "O prazo foi prorrogado.",
            "Atualizei o contrato.",
        ] {
            assert!(claims_change(t), "{t}");
        }
        for t in [
            "D1 was terminated at midnight by law midnight_deadline.",
            "I proposed a change to D1. Nothing has changed yet: the proposal awaits your confirmation.",
            "There are 2 contracts on hold.",
            "The witness confirmed within the hour.",
            "I cannot delete contracts; I can only propose amendments.",
        ] {
            assert!(!claims_change(t), "{t}");
        }
    }

    #[test]
    fn an_uncited_past_change_is_a_claim_and_a_cited_one_a_fact() {
        for t in [
            "The deadline of contract D1 was extended by 3 days.",
            "D1 was successfully deleted.",
            "The contracts were updated.",
        ] {
            assert!(claims_unmade_change(t, false), "{t}");
            assert!(!claims_unmade_change(t, true), "{t}");
        }
        assert!(claims_unmade_change("The ledger has been updated.", true));
        assert!(!claims_unmade_change(
            "D1 was terminated at midnight by law midnight_deadline.",
            false
        ));
    }

    #[test]
    fn actions_must_name_a_proposal_of_the_turn() {
        let p = Uuid::now_v7();
        let other = Uuid::now_v7();
        let answer = |a: Value| json!({"actions": [a]});
        let ok = answer(json!({"type": "propose_amendment", "summary": "s", "proposal_id": p}));
        assert!(action_errors(&ok, &[p]).is_empty());
        assert_eq!(action_errors(&ok, &[]).len(), 1);
        let wrong =
            answer(json!({"type": "propose_amendment", "summary": "s", "proposal_id": other}));
        assert!(action_errors(&wrong, &[p])[0].contains("not a proposal made in this turn"));
        let bare = answer(json!({"type": "extend", "summary": "s"}));
        assert_eq!(action_errors(&bare, &[p]).len(), 1);
        assert!(action_errors(&json!({"actions": []}), &[]).is_empty());
    }

    #[test]
    fn an_unsupported_answer_keeps_the_question_back_and_caps_confidence() {
        let a = unsupported_answer(
            &json!({"text": "There are no contracts on hold.", "confidence": 0.95}),
            0,
        );
        assert_eq!(a["text"], UNSUPPORTED_TEXT);
        assert_eq!(a["confidence"], UNSUPPORTED_CONFIDENCE);
        assert_eq!(a["follow_up_question"], UNSUPPORTED_QUESTION);
        let a = unsupported_answer(
            &json!({"confidence": 0.7, "follow_up_question": "Which contract?"}),
            2,
        );
        assert_eq!(a["follow_up_question"], "Which contract?");
        assert_eq!(a["telemetry"]["tool_use_count"], 2);
    }
}
