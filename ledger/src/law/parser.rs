//! Recursive-descent parser for the seed grammar (seed 001, Article 9), liberal where the seed's
//! own examples are: `scope:` and `clock:` are optional and may come in either order, blocks may
//! be missing (at least one is needed) or out of order, conditions and action lists may run over
//! several lines, a bare value may stand as a condition (`if not: true`), and `+`/`-` work on
//! times and durations (`now >= created_at + 24h`).
//!
//! The `law`, `scope:` and `clock:` lines are read as raw text of their line; the rest as tokens.

use super::ast::{
    Action, ArithOp, Block, Clock, CompareOp, Expr, Law, Literal, Path, Term, Triage, Version,
    is_identifier,
};
use super::error::{ParseError, Position};
use super::lexer::{Tok, Token, tokenize};

/// How deeply parentheses, `NOT`s and lists may nest. Bounds recursion in the parser and in
/// everything that walks the tree afterwards.
pub const MAX_DEPTH: u32 = 64;

/// Words that cannot begin a variable name.
const RESERVED: &[&str] = &[
    "if", "then", "AND", "OR", "NOT", "in", "true", "false", "null",
];

const ACTION_EXPECTED: &str = "an action such as accept or hold(hours=N)";

/// Parses one law.
pub fn parse(src: &str) -> Result<Law, ParseError> {
    Parser {
        src,
        toks: tokenize(src),
        i: 0,
        depth: 0,
    }
    .law()
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    i: usize,
    depth: u32,
}

type R<T> = Result<T, ParseError>;

impl Parser<'_> {
    // ---- token access ------------------------------------------------------------------

    fn tok(&self) -> &Token {
        // `tokenize` always ends with Eof and `bump` never moves past it.
        let last = self.toks.len().saturating_sub(1);
        &self.toks[self.i.min(last)]
    }

    fn kind(&self) -> &Tok {
        &self.tok().kind
    }

    fn bump(&mut self) -> Token {
        let t = self.tok().clone();
        if t.kind != Tok::Eof {
            self.i += 1;
        }
        t
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.kind(), Tok::Ident(w) if w == word)
    }

    /// How the current token reads in an error message.
    fn found(&self) -> String {
        let t = self.tok();
        match &t.kind {
            Tok::Eof => "end of input".to_string(),
            _ => format!("{:?}", &self.src[t.start..t.end]),
        }
    }

    /// An error at the current token; a lexer error there wins, being more precise.
    fn unexpected(&self, expected: impl Into<String>) -> ParseError {
        if let Tok::Bad(e) = self.kind() {
            return e.clone();
        }
        ParseError::Unexpected {
            at: self.tok().at,
            expected: expected.into(),
            found: self.found(),
        }
    }

    fn expect(&mut self, kind: &Tok, expected: &str) -> R<Token> {
        if self.kind() == kind {
            Ok(self.bump())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::TooDeep {
                at: self.tok().at,
                limit: MAX_DEPTH,
            });
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    // ---- raw header lines --------------------------------------------------------------

    /// The text from byte `from` to the end of its line, without a `#` comment.
    fn rest_of_line(&self, from: usize) -> &str {
        let line = self.src[from..].split('\n').next().unwrap_or("");
        line.split('#').next().unwrap_or("")
    }

    /// The position of byte offset `at` (which must be on a char boundary).
    fn position_of(&self, at: usize) -> Position {
        let before = &self.src[..at];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        Position {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }

    /// Moves past every token on `line`.
    fn skip_line(&mut self, line: u32) {
        while self.tok().kind != Tok::Eof && self.tok().at.line == line {
            self.i += 1;
        }
    }

    /// The trimmed raw value after a `word:` header (current token is the colon), its byte
    /// offset, and the line to skip.
    fn header_value(&mut self) -> (usize, String, u32) {
        let colon = self.bump();
        let raw = self.rest_of_line(colon.end);
        let lead = raw.len() - raw.trim_start().len();
        let value = raw.trim().to_string();
        (colon.end + lead, value, colon.at.line)
    }

    // ---- the law -----------------------------------------------------------------------

    fn law(&mut self) -> R<Law> {
        if !self.is_word("law") {
            return Err(self.unexpected("`law <id>:<version>:`"));
        }
        let head = self.bump();
        let (id, version) = self.law_header(head.end)?;
        self.skip_line(head.at.line);

        let mut scope: Option<(Position, String)> = None;
        let mut clock: Option<(Position, Clock)> = None;
        loop {
            let word = match self.kind() {
                Tok::Ident(w) if w == "scope" || w == "clock" => w.clone(),
                _ => break,
            };
            let at = self.tok().at;
            self.bump();
            if self.kind() != &Tok::Colon {
                return Err(self.unexpected(format!("`:` after `{word}`")));
            }
            let (offset, value, line) = self.header_value();
            let value_at = self.position_of(offset);
            let first = if word == "scope" {
                scope.as_ref().map(|s| s.0)
            } else {
                clock.as_ref().map(|c| c.0)
            };
            if let Some(first) = first {
                return Err(ParseError::Duplicate {
                    at,
                    what: format!("{word}:"),
                    first,
                });
            }
            if word == "scope" {
                scope = Some((at, scope_value(&value, value_at)?));
            } else {
                clock = Some((at, clock_value(&value, value_at)?));
            }
            self.skip_line(line);
        }

        let mut blocks: [Option<(Position, Block)>; 3] = [None, None, None];
        while self.is_word("if") {
            let at = self.tok().at;
            self.bump();
            let triage = match self.kind() {
                Tok::Ident(w) if w == "ok" => Triage::Ok,
                Tok::Ident(w) if w == "doubt" => Triage::Doubt,
                Tok::Ident(w) if w == "not" => Triage::Not,
                _ => return Err(self.unexpected("`ok`, `doubt` or `not` after `if`")),
            };
            self.bump();
            self.expect(&Tok::Colon, &format!("`:` after `if {triage}`"))?;
            let slot = &blocks[triage as usize];
            if let Some((first, _)) = slot {
                return Err(ParseError::Duplicate {
                    at,
                    what: format!("if {triage}:"),
                    first: *first,
                });
            }
            let block = self.block(triage)?;
            blocks[triage as usize] = Some((at, block));
            if !self.is_word("if") && self.kind() != &Tok::Eof {
                return Err(self.unexpected("`,` and another action, or the next `if` block"));
            }
        }
        if self.kind() != &Tok::Eof {
            let expected = if blocks.iter().any(Option::is_some) {
                "the next `if` block"
            } else {
                "`scope:`, `clock:` or a block such as `if ok:`"
            };
            return Err(self.unexpected(expected));
        }
        let [ok, doubt, not] = blocks.map(|b| b.map(|(_, b)| b));
        if ok.is_none() && doubt.is_none() && not.is_none() {
            return Err(ParseError::NoBlocks { at: self.tok().at });
        }
        Ok(Law {
            id,
            version,
            scope: scope.map(|s| s.1),
            clock: clock.map(|c| c.1),
            ok,
            doubt,
            not,
        })
    }

    /// `<id>:<MAJOR.MINOR.PATCH>:` from the raw text after `law` (the last colon optional).
    fn law_header(&self, from: usize) -> R<(String, Version)> {
        let raw = self.rest_of_line(from);
        let mut cur = RawCursor {
            raw,
            offset: 0,
            base: from,
        };
        cur.skip_ws();
        let id = cur.take(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err(cur.unexpected(self, "a law id such as midnight_deadline"));
        }
        let id = id.to_string();
        cur.skip_ws();
        if !cur.eat(':') {
            return Err(cur.unexpected(self, "`:` after the law id"));
        }
        cur.skip_ws();
        let version_at = self.position_of(cur.base + cur.offset);
        let text = cur.take(|c| !c.is_whitespace() && c != ':');
        let version = parse_version(text).ok_or_else(|| ParseError::InvalidVersion {
            at: version_at,
            text: text.to_string(),
        })?;
        cur.skip_ws();
        cur.eat(':');
        cur.skip_ws();
        if cur.offset < raw.len() {
            return Err(cur.unexpected(self, "the end of the `law` line"));
        }
        Ok((id, version))
    }

    // ---- blocks ------------------------------------------------------------------------

    fn block(&mut self, triage: Triage) -> R<Block> {
        if self.is_word("then") {
            return Err(self.unexpected(format!("a condition after `if {triage}:`")));
        }
        let condition = self.expr()?;
        if !self.is_word("then") {
            let mut expected = "`then:` or an operator such as AND".to_string();
            if let Tok::Ident(w) = self.kind()
                && matches!(w.as_str(), "and" | "or" | "not")
            {
                expected.push_str(" (AND, OR and NOT are written in capitals)");
            }
            return Err(self.unexpected(expected));
        }
        self.bump();
        self.expect(&Tok::Colon, "`:` after `then`")?;
        let mut actions = vec![self.action()?];
        while self.kind() == &Tok::Comma {
            self.bump();
            actions.push(self.action()?);
        }
        Ok(Block { condition, actions })
    }

    fn action(&mut self) -> R<Action> {
        let name = match self.kind() {
            Tok::Ident(w) => w.clone(),
            _ => return Err(self.unexpected(ACTION_EXPECTED)),
        };
        let at = self.tok().at;
        let params: &[&str] = match name.as_str() {
            "accept" | "append_ledger" | "permit" | "deny" => &[],
            "hold" => &["hours"],
            "terminate" => &["reason"],
            "notify" => &["role"],
            "tag" => &["key", "val"],
            _ => return Err(self.unexpected(ACTION_EXPECTED)),
        };
        self.bump();
        if params.is_empty() {
            if self.kind() == &Tok::LParen {
                return Err(self.unexpected(format!(
                    "`,` or the next block (`{name}` takes no arguments)"
                )));
            }
            return Ok(match name.as_str() {
                "accept" => Action::Accept,
                "append_ledger" => Action::AppendLedger,
                "permit" => Action::Permit,
                _ => Action::Deny,
            });
        }
        let signature = format!(
            "{name}({})",
            params
                .iter()
                .map(|p| format!("{p}=…"))
                .collect::<Vec<_>>()
                .join(",")
        );
        self.expect(&Tok::LParen, &format!("`(` as in {signature}"))?;
        let mut args: Vec<(String, Position, Token)> = Vec::new();
        loop {
            let arg_at = self.tok().at;
            let arg = match self.kind() {
                Tok::Ident(w) if params.contains(&w.as_str()) => w.clone(),
                _ => {
                    return Err(self.unexpected(format!(
                        "{} as in {signature}",
                        params
                            .iter()
                            .map(|p| format!("`{p}`"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )));
                }
            };
            if let Some((_, first, _)) = args.iter().find(|(a, _, _)| *a == arg) {
                return Err(ParseError::Duplicate {
                    at: arg_at,
                    what: arg,
                    first: *first,
                });
            }
            self.bump();
            self.expect(&Tok::Assign, &format!("`=` after `{arg}`"))?;
            let value = match self.kind() {
                Tok::Ident(_) | Tok::Str(_) | Tok::Number(_) | Tok::Duration(_) => self.bump(),
                _ => return Err(self.unexpected(format!("a value for `{arg}`"))),
            };
            args.push((arg, arg_at, value));
            if self.kind() == &Tok::Comma {
                self.bump();
                continue;
            }
            self.expect(&Tok::RParen, "`,` or `)`")?;
            break;
        }
        let mut get = |param: &str| -> R<Token> {
            let i = args
                .iter()
                .position(|(a, _, _)| a == param)
                .ok_or_else(|| ParseError::MissingArgument {
                    at,
                    action: name.clone(),
                    argument: param.to_string(),
                })?;
            Ok(args.swap_remove(i).2)
        };
        Ok(match name.as_str() {
            "hold" => {
                let t = get("hours")?;
                Action::Hold {
                    hours: self.hours(&t)?,
                }
            }
            "terminate" => Action::Terminate {
                reason: self.text(get("reason")?),
            },
            "notify" => Action::Notify {
                role: self.text(get("role")?),
            },
            _ => {
                let key = get("key")?;
                let val = get("val")?;
                Action::Tag {
                    key: self.text(key),
                    val: self.text(val),
                }
            }
        })
    }

    fn hours(&self, t: &Token) -> R<u32> {
        match t.kind {
            Tok::Number(n) if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) => {
                // Checked above to be a whole number within u32.
                Ok(n as u32)
            }
            _ => Err(ParseError::Unexpected {
                at: t.at,
                expected: "a whole number of hours".into(),
                found: format!("{:?}", &self.src[t.start..t.end]),
            }),
        }
    }

    /// A text argument: a string's contents, or the word or number exactly as written.
    fn text(&self, t: Token) -> String {
        match t.kind {
            Tok::Str(s) => s,
            _ => self.src[t.start..t.end].to_string(),
        }
    }

    // ---- conditions --------------------------------------------------------------------

    fn expr(&mut self) -> R<Expr> {
        self.enter()?;
        let mut items = vec![self.and()?];
        while self.is_word("OR") {
            self.bump();
            items.push(self.and()?);
        }
        self.leave();
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> R<Expr> {
        let mut items = vec![self.not()?];
        while self.is_word("AND") {
            self.bump();
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn not(&mut self) -> R<Expr> {
        if self.is_word("NOT") {
            self.bump();
            self.enter()?;
            let inner = self.not()?;
            self.leave();
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.kind() == &Tok::LParen {
            // `(a AND b)` groups a condition; `(now - x) > 24h` groups a value. Parse a
            // condition, and if it was a bare value followed by an operator, keep going as a value.
            self.bump();
            let inner = self.expr()?;
            self.expect(&Tok::RParen, "`)`")?;
            return match inner {
                Expr::Test(t) => {
                    let t = self.arith_rest(t)?;
                    self.comparison(t)
                }
                e => Ok(e),
            };
        }
        let t = self.term()?;
        self.comparison(t)
    }

    /// What follows a value in a condition: a comparison, `in`, or nothing (a bare test).
    fn comparison(&mut self, left: Term) -> R<Expr> {
        let op = match self.kind() {
            Tok::EqEq => CompareOp::Eq,
            Tok::NotEq => CompareOp::Ne,
            Tok::Lt => CompareOp::Lt,
            Tok::Le => CompareOp::Le,
            Tok::Gt => CompareOp::Gt,
            Tok::Ge => CompareOp::Ge,
            Tok::Assign => {
                return Err(self.unexpected("a comparison such as `==` (one `=` assigns)"));
            }
            Tok::Ident(w) if w == "in" => {
                self.bump();
                let set = self.term()?;
                return Ok(Expr::In { item: left, set });
            }
            _ => return Ok(Expr::Test(left)),
        };
        self.bump();
        let right = self.term()?;
        Ok(Expr::Compare { op, left, right })
    }

    // ---- values ------------------------------------------------------------------------

    fn term(&mut self) -> R<Term> {
        let first = self.primary()?;
        self.arith_rest(first)
    }

    fn arith_rest(&mut self, first: Term) -> R<Term> {
        let mut rest = Vec::new();
        loop {
            let op = match self.kind() {
                Tok::Plus => ArithOp::Add,
                Tok::Minus => ArithOp::Sub,
                _ => break,
            };
            self.bump();
            rest.push((op, self.primary()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Term::Arith {
                first: Box::new(first),
                rest,
            }
        })
    }

    fn primary(&mut self) -> R<Term> {
        let literal = |l| Ok(Term::Literal(l));
        match self.kind().clone() {
            Tok::Number(n) => {
                self.bump();
                literal(Literal::Number(n))
            }
            Tok::Duration(d) => {
                self.bump();
                literal(Literal::Duration(d))
            }
            Tok::Str(s) => {
                self.bump();
                literal(Literal::String(s))
            }
            Tok::Minus => {
                self.bump();
                match self.kind().clone() {
                    Tok::Number(n) => {
                        self.bump();
                        literal(Literal::Number(-n))
                    }
                    Tok::Duration(d) => {
                        self.bump();
                        // Bounds are symmetric, so the negation is always in range.
                        match super::ast::Duration::from_seconds(-d.seconds()) {
                            Some(d) => literal(Literal::Duration(d)),
                            None => Err(self.unexpected("a smaller duration")),
                        }
                    }
                    _ => Err(self.unexpected("a number or a duration after `-`")),
                }
            }
            Tok::LBracket => {
                self.bump();
                self.enter()?;
                let mut items = Vec::new();
                while self.kind() != &Tok::RBracket {
                    items.push(self.term()?);
                    if self.kind() == &Tok::Comma {
                        self.bump();
                    } else if self.kind() != &Tok::RBracket {
                        return Err(self.unexpected("`,` or `]`"));
                    }
                }
                self.bump();
                self.leave();
                Ok(Term::List(items))
            }
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let t = self.term()?;
                self.expect(&Tok::RParen, "`)`")?;
                self.leave();
                Ok(t)
            }
            Tok::Ident(w) => match w.as_str() {
                "true" => {
                    self.bump();
                    literal(Literal::Bool(true))
                }
                "false" => {
                    self.bump();
                    literal(Literal::Bool(false))
                }
                "null" => {
                    self.bump();
                    literal(Literal::Null)
                }
                _ if RESERVED.contains(&w.as_str()) || !is_identifier(&w) => {
                    Err(self.unexpected("a value (a variable, number, string, duration or list)"))
                }
                _ => {
                    self.bump();
                    let mut segments = vec![w];
                    while self.kind() == &Tok::Dot {
                        self.bump();
                        match self.kind() {
                            Tok::Ident(s) => {
                                segments.push(s.clone());
                                self.bump();
                            }
                            _ => return Err(self.unexpected("a name after `.`")),
                        }
                    }
                    Ok(Term::Path(Path(segments)))
                }
            },
            _ => Err(self.unexpected("a value (a variable, number, string, duration or list)")),
        }
    }
}

/// A cursor over one raw header line, for positions in its errors.
struct RawCursor<'s> {
    raw: &'s str,
    offset: usize,
    /// Byte offset of `raw` in the whole source.
    base: usize,
}

impl<'s> RawCursor<'s> {
    fn rest(&self) -> &'s str {
        &self.raw[self.offset..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.offset += rest.len() - rest.trim_start().len();
    }

    fn take(&mut self, keep: impl Fn(char) -> bool) -> &'s str {
        let rest = self.rest();
        let n = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.offset += n;
        &rest[..n]
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.offset += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn unexpected(&self, p: &Parser<'_>, expected: &str) -> ParseError {
        let word = self.rest().split_whitespace().next();
        ParseError::Unexpected {
            at: p.position_of(self.base + self.offset),
            expected: expected.to_string(),
            found: word.map_or_else(|| "end of line".to_string(), |w| format!("{w:?}")),
        }
    }
}

fn parse_version(text: &str) -> Option<Version> {
    let mut parts = text.split('.');
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = Version {
        major: next()?,
        minor: next()?,
        patch: next()?,
    };
    parts.next().is_none().then_some(v)
}

/// One word of letters, digits and `_ . - / :`, such as `deliverable` or `contracts/loan`.
fn scope_value(value: &str, at: Position) -> R<String> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/:".contains(c));
    if ok {
        return Ok(value.to_string());
    }
    Err(ParseError::Unexpected {
        at,
        expected: "a scope such as deliverable (one word)".into(),
        found: if value.is_empty() {
            "end of line".into()
        } else {
            format!("{value:?}")
        },
    })
}

/// `midnight <Zone>`, `midnight` (Europe/Paris) or `realtime`.
fn clock_value(value: &str, at: Position) -> R<Clock> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let zone_shaped = |z: &str| {
        z.starts_with(|c: char| c.is_ascii_alphabetic())
            && z.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+-/".contains(c))
    };
    match words.as_slice() {
        ["realtime"] => Ok(Clock::Realtime),
        ["midnight"] => Ok(Clock::Midnight {
            tz: Clock::DEFAULT_TZ.to_string(),
        }),
        ["midnight", tz] if zone_shaped(tz) => Ok(Clock::Midnight { tz: tz.to_string() }),
        _ => Err(ParseError::InvalidClock {
            at,
            text: value.to_string(),
        }),
    }
}
