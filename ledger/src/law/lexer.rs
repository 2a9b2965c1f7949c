//! Turns law text into tokens. The lexer never fails: a malformed piece becomes a `Bad` token
//! holding its error, reported only if the parser reaches it. That lets the parser read the
//! `law`, `scope:` and `clock:` lines as raw text (a zone such as `Etc/GMT+3` is not made of
//! expression tokens) while everything else is token-based. No token spans a line break, so the
//! parser can skip "the rest of this line" by line number.

use super::ast::Duration;
use super::error::{ParseError, Position};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A word; after a `.` also a run of digits (an array index in a path).
    Ident(String),
    Number(f64),
    Duration(Duration),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Dot,
    Assign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Bad(ParseError),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: Tok,
    /// Byte range in the source.
    pub start: usize,
    pub end: usize,
    pub at: Position,
}

/// All tokens of `src`, ending with one `Eof`.
pub(crate) fn tokenize(src: &str) -> Vec<Token> {
    let mut lx = Lexer {
        src,
        pos: 0,
        line: 1,
        column: 1,
    };
    let mut out: Vec<Token> = Vec::new();
    loop {
        lx.skip_blanks();
        let start = lx.pos;
        let at = lx.here();
        let after_dot = out
            .last()
            .is_some_and(|t| t.kind == Tok::Dot && t.end == start);
        let Some(c) = lx.peek() else {
            out.push(Token {
                kind: Tok::Eof,
                start,
                end: start,
                at,
            });
            return out;
        };
        let kind = lx.token(c, at, after_dot);
        out.push(Token {
            kind,
            start,
            end: lx.pos,
            at,
        });
    }
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    line: u32,
    column: u32,
}

impl Lexer<'_> {
    fn here(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.src[self.pos..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.column = 1;
        } else {
            self.column = self.column.saturating_add(1);
        }
        Some(c)
    }

    /// Whitespace (line breaks included: the grammar is not line-sensitive past the header) and
    /// `#` comments to the end of the line.
    fn skip_blanks(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.bump();
            } else if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
        &self.src[start..self.pos]
    }

    fn token(&mut self, c: char, at: Position, after_dot: bool) -> Tok {
        if after_dot && c.is_ascii_digit() {
            return Tok::Ident(self.take_while(|c| c.is_ascii_digit()).to_string());
        }
        if c.is_ascii_alphabetic() || c == '_' {
            return Tok::Ident(
                self.take_while(|c| c.is_ascii_alphanumeric() || c == '_')
                    .to_string(),
            );
        }
        if c.is_ascii_digit() {
            return self.number(at);
        }
        if c == '"' || c == '\'' {
            return self.string(c, at);
        }
        self.bump();
        let two = |lx: &mut Self, next: char, yes: Tok, no: Tok| {
            if lx.peek() == Some(next) {
                lx.bump();
                yes
            } else {
                no
            }
        };
        match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            ':' => Tok::Colon,
            '.' => Tok::Dot,
            '+' => Tok::Plus,
            '-' => Tok::Minus,
            '=' => two(self, '=', Tok::EqEq, Tok::Assign),
            '<' => two(self, '=', Tok::Le, Tok::Lt),
            '>' => two(self, '=', Tok::Ge, Tok::Gt),
            '!' if self.peek() == Some('=') => {
                self.bump();
                Tok::NotEq
            }
            c => Tok::Bad(ParseError::UnexpectedChar { at, ch: c }),
        }
    }

    /// `12`, `1.5`, or a duration: whole numbers with units, `24h`, `1h30m`.
    fn number(&mut self, at: Position) -> Tok {
        let start = self.pos;
        self.take_while(|c| c.is_ascii_digit());
        let mut fractional = false;
        if self.peek() == Some('.') && self.peek2().is_some_and(|c| c.is_ascii_digit()) {
            fractional = true;
            self.bump();
            self.take_while(|c| c.is_ascii_digit());
        }
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        {
            self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
            let text = &self.src[start..self.pos];
            if fractional {
                return Tok::Bad(ParseError::InvalidDuration {
                    at,
                    text: text.to_string(),
                    reason: "durations are whole numbers of units, such as 90m".into(),
                });
            }
            return duration(text, at);
        }
        let text = &self.src[start..self.pos];
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Tok::Number(n),
            _ => Tok::Bad(ParseError::InvalidNumber {
                at,
                text: text.to_string(),
                reason: "too large".into(),
            }),
        }
    }

    /// A quoted string, `"…"` or `'…'` (the seed uses both). It may not run past its line.
    fn string(&mut self, quote: char, at: Position) -> Tok {
        self.bump();
        let mut out = String::new();
        loop {
            let escape_at = self.here();
            match self.peek() {
                None | Some('\n') => return Tok::Bad(ParseError::UnterminatedString { at }),
                Some(c) if c == quote => {
                    self.bump();
                    return Tok::Str(out);
                }
                Some('\\') => {
                    self.bump();
                    let c = match self.peek() {
                        None | Some('\n') => {
                            return Tok::Bad(ParseError::UnterminatedString { at });
                        }
                        Some(c) => c,
                    };
                    self.bump();
                    match c {
                        '\\' | '"' | '\'' => out.push(c),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        c => {
                            // Skip to the closing quote so the error is about the escape only.
                            while self.peek().is_some_and(|c| c != quote && c != '\n') {
                                self.bump();
                            }
                            if self.peek() == Some(quote) {
                                self.bump();
                            }
                            return Tok::Bad(ParseError::InvalidEscape {
                                at: escape_at,
                                ch: c,
                            });
                        }
                    }
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                }
            }
        }
    }
}

/// A duration token: `1h30m` → 5400 seconds.
fn duration(text: &str, at: Position) -> Tok {
    match duration_from_text(text) {
        Ok(d) => Tok::Duration(d),
        Err(reason) => Tok::Bad(ParseError::InvalidDuration {
            at,
            text: text.to_string(),
            reason: reason.to_string(),
        }),
    }
}

/// Reads law duration syntax (`24h`, `1h30m`, units w d h m s, an optional leading `-`); the
/// evaluator uses it too, for durations stored as JSON strings.
pub(crate) fn duration_from_text(text: &str) -> Result<Duration, &'static str> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    if rest.is_empty() {
        return Err("empty");
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err("each unit needs a whole number before it, as in 1h30m");
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(unit_len);
        let size: i64 = match unit {
            "w" => 604_800,
            "d" => 86_400,
            "h" => 3_600,
            "m" => 60,
            "s" => 1,
            _ => return Err("units are w, d, h, m and s"),
        };
        total = number
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(size))
            .and_then(|n| total.checked_add(n))
            .ok_or("too large")?;
        rest = after;
    }
    let total = if negative { -total } else { total };
    Duration::from_seconds(total).ok_or("too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        tokenize(src).into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn durations_read_compound_units() {
        let d = |s| Tok::Duration(Duration::from_seconds(s).unwrap());
        assert_eq!(
            kinds("24h 5m 3d 1h30m 2w 10s"),
            vec![
                d(86_400),
                d(300),
                d(259_200),
                d(5_400),
                d(1_209_600),
                d(10),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn digits_after_a_dot_are_a_path_segment_not_a_number() {
        assert_eq!(
            kinds("a.0.1"),
            vec![
                Tok::Ident("a".into()),
                Tok::Dot,
                Tok::Ident("0".into()),
                Tok::Dot,
                Tok::Ident("1".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn strings_take_either_quote_and_stop_at_the_line_end() {
        assert_eq!(
            kinds(r#"'a\'b' "c""#),
            vec![Tok::Str("a'b".into()), Tok::Str("c".into()), Tok::Eof]
        );
        assert!(matches!(
            kinds("\"abc\nx")[0],
            Tok::Bad(ParseError::UnterminatedString { .. })
        ));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let toks = tokenize("é ü x");
        assert_eq!(toks[2].at, Position { line: 1, column: 5 });
    }

    #[test]
    fn an_unknown_unit_is_a_bad_token() {
        assert!(matches!(
            kinds("3y")[0],
            Tok::Bad(ParseError::InvalidDuration { .. })
        ));
    }
}
