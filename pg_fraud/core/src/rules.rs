//! The rule language: small expressions over feature names, compiled once and evaluated per
//! row.
//!
//! ```text
//! amount > 10000 and tx_count_1h > 10
//! is_new_device and km_from_home > 1000 and not card_present
//! country in ('NG', 'RU') or amount between 9000 and 9999
//! clamp((amount_zscore - 3) / 5, 0, 1)        -- a number: a graded strength in [0, 1]
//! ```
//!
//! Semantics follow SQL: a missing feature is NULL, comparisons with NULL are NULL, `and` /
//! `or` use three-valued logic, and a rule fires only when it evaluates to true (or, for a
//! numeric rule, to a number above 0). Division by zero and `ln` of a non-positive number
//! are NULL, not errors: a rule must never break an insert.

use std::borrow::Cow;
use std::fmt;

use crate::features::{feature_index, FType, FeatureVector, Value, FEATURES};

/// A compile error with the position it points at.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    /// What is wrong.
    pub message: String,
    /// 1-based character column in the source.
    pub column: usize,
    /// The rule source.
    pub source: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at column {}\n  {}\n  {}^",
            self.message,
            self.column,
            self.source,
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

impl std::error::Error for RuleError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Kw(Kw),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kw {
    And,
    Or,
    Not,
    In,
    Between,
    Is,
    Null,
    True,
    False,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Kw(k) => format!("'{}'", format!("{k:?}").to_lowercase()),
            Tok::Op(o) => format!("'{o}'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "the end of the rule".into(),
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, RuleError> {
    let mut lx = Lexer { src, chars: src.char_indices().collect(), pos: 0 };
    let mut out = Vec::new();
    loop {
        let (tok, col) = lx.next_token()?;
        let end = tok == Tok::End;
        out.push((tok, col));
        if end {
            return Ok(out);
        }
    }
}

impl Lexer<'_> {
    fn err(&self, col: usize, message: impl Into<String>) -> RuleError {
        RuleError { message: message.into(), column: col, source: self.src.to_string() }
    }

    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).map(|&(_, c)| c)
    }

    fn next_token(&mut self) -> Result<(Tok, usize), RuleError> {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        // `--` starts a comment to the end of the line
        if self.peek(0) == Some('-') && self.peek(1) == Some('-') {
            while self.peek(0).is_some_and(|c| c != '\n') {
                self.pos += 1;
            }
            return self.next_token();
        }
        let col = self.pos + 1;
        let Some(c) = self.peek(0) else { return Ok((Tok::End, col)) };
        if c.is_ascii_digit() || (c == '.' && self.peek(1).is_some_and(|d| d.is_ascii_digit())) {
            let start = self.pos;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '_') {
                self.pos += 1;
            }
            if matches!(self.peek(0), Some('e' | 'E'))
                && (self.peek(1).is_some_and(|c| c.is_ascii_digit())
                    || (matches!(self.peek(1), Some('+' | '-')) && self.peek(2).is_some_and(|c| c.is_ascii_digit())))
            {
                self.pos += 2;
                while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
            let text: String = self.chars[start..self.pos].iter().map(|&(_, c)| c).filter(|&c| c != '_').collect();
            let n: f64 = text.parse().map_err(|_| self.err(col, format!("invalid number '{text}'")))?;
            if !n.is_finite() {
                return Err(self.err(col, format!("number '{text}' is out of range")));
            }
            return Ok((Tok::Num(n), col));
        }
        if c.is_alphabetic() || c == '_' {
            let start = self.pos;
            while self.peek(0).is_some_and(|c| c.is_alphanumeric() || c == '_') {
                self.pos += 1;
            }
            let word: String = self.chars[start..self.pos].iter().map(|&(_, c)| c).collect();
            let kw = match word.to_ascii_lowercase().as_str() {
                "and" => Some(Kw::And),
                "or" => Some(Kw::Or),
                "not" => Some(Kw::Not),
                "in" => Some(Kw::In),
                "between" => Some(Kw::Between),
                "is" => Some(Kw::Is),
                "null" => Some(Kw::Null),
                "true" => Some(Kw::True),
                "false" => Some(Kw::False),
                _ => None,
            };
            return Ok((kw.map_or(Tok::Ident(word), Tok::Kw), col));
        }
        if c == '\'' {
            self.pos += 1;
            let mut s = String::new();
            loop {
                match self.peek(0) {
                    None => return Err(self.err(col, "unterminated string (strings use single quotes: 'NG')")),
                    Some('\'') if self.peek(1) == Some('\'') => {
                        s.push('\'');
                        self.pos += 2;
                    }
                    Some('\'') => {
                        self.pos += 1;
                        return Ok((Tok::Str(s), col));
                    }
                    Some(ch) => {
                        s.push(ch);
                        self.pos += 1;
                    }
                }
            }
        }
        let two: String = [Some(c), self.peek(1)].iter().flatten().collect();
        for op in ["<=", ">=", "<>", "!=", "=="] {
            if two == op {
                self.pos += 2;
                return Ok((Tok::Op(op), col));
            }
        }
        self.pos += 1;
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => Tok::Op("="),
            '<' => Tok::Op("<"),
            '>' => Tok::Op(">"),
            '+' => Tok::Op("+"),
            '-' => Tok::Op("-"),
            '*' => Tok::Op("*"),
            '/' => Tok::Op("/"),
            '%' => Tok::Op("%"),
            '"' => return Err(self.err(col, "double quotes are not allowed: strings use single quotes ('NG')")),
            other => return Err(self.err(col, format!("unexpected character '{other}'"))),
        };
        Ok((tok, col))
    }
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Built-in functions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Abs,
    Ln,
    Log10,
    Sqrt,
    Exp,
    Min,
    Max,
    Clamp,
    Coalesce,
    Lower,
    Upper,
}

const FUNCTIONS: &[(&str, Func)] = &[
    ("abs", Func::Abs),
    ("ln", Func::Ln),
    ("log10", Func::Log10),
    ("sqrt", Func::Sqrt),
    ("exp", Func::Exp),
    ("min", Func::Min),
    ("least", Func::Min),
    ("max", Func::Max),
    ("greatest", Func::Max),
    ("clamp", Func::Clamp),
    ("coalesce", Func::Coalesce),
    ("lower", Func::Lower),
    ("upper", Func::Upper),
];

/// A type-checked expression.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Const(Value),
    Feature(usize),
    Neg(Box<Expr>),
    Arith(Arith, Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    In { expr: Box<Expr>, list: Vec<Value>, negated: bool },
    Between { expr: Box<Expr>, lo: Box<Expr>, hi: Box<Expr>, negated: bool },
    IsNull { expr: Box<Expr>, negated: bool },
    Call(Func, Vec<Expr>),
}

/// Static type during checking; `Null` is the type of the literal `null`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    T(FType),
    Null,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::T(t) => t.name(),
            Ty::Null => "null",
        }
    }
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    src: &'a str,
    depth: usize,
}

/// Parentheses, `not`s and unary minuses may nest this deep: the parser recurses, and a
/// stack overflow inside a Postgres backend takes the whole server down.
const MAX_NESTING: usize = 64;

/// The compiled tree may be this deep (long `and` chains build deep trees; evaluation recurses).
const MAX_TREE_DEPTH: usize = 256;

fn tree_depth(e: &Expr) -> usize {
    1 + match e {
        Expr::Const(_) | Expr::Feature(_) => 0,
        Expr::Neg(a) | Expr::Not(a) | Expr::IsNull { expr: a, .. } | Expr::In { expr: a, .. } => tree_depth(a),
        Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
            tree_depth(a).max(tree_depth(b))
        }
        Expr::Between { expr, lo, hi, .. } => tree_depth(expr).max(tree_depth(lo)).max(tree_depth(hi)),
        Expr::Call(_, args) => args.iter().map(tree_depth).max().unwrap_or(0),
    }
}

type PResult = Result<(Expr, Ty, usize), RuleError>;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn col(&self) -> usize {
        self.toks[self.pos].1
    }

    fn bump(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn err(&self, col: usize, message: impl Into<String>) -> RuleError {
        RuleError { message: message.into(), column: col, source: self.src.to_string() }
    }

    fn eat_kw(&mut self, kw: Kw) -> bool {
        if self.peek() == &Tok::Kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), RuleError> {
        if self.peek() == &tok {
            self.bump();
            Ok(())
        } else {
            Err(self.err(self.col(), format!("expected {what}, found {}", self.peek().describe())))
        }
    }

    fn want(&self, ty: Ty, want: FType, col: usize, context: &str) -> Result<(), RuleError> {
        if ty == Ty::T(want) {
            Ok(())
        } else if ty == Ty::Null {
            Err(self.err(
                col,
                format!("{context} expects a {}, got null (use 'is null' to test for a missing value)", want.name()),
            ))
        } else {
            Err(self.err(col, format!("{context} expects a {}, got a {}", want.name(), ty.name())))
        }
    }

    fn nest(&mut self) -> Result<(), RuleError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.err(self.col(), format!("the rule nests deeper than {MAX_NESTING} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> PResult {
        self.nest()?;
        let r = self.or_inner();
        self.depth -= 1;
        r
    }

    fn or_inner(&mut self) -> PResult {
        let (mut lhs, mut ty, col) = self.and()?;
        while self.peek() == &Tok::Kw(Kw::Or) {
            let op_col = self.bump().1;
            self.want(ty, FType::Bool, col, "'or'")?;
            let (rhs, rty, rcol) = self.and()?;
            self.want(rty, FType::Bool, rcol, "'or'")?;
            let _ = op_col;
            lhs = Expr::Or(Box::new(lhs), Box::new(rhs));
            ty = Ty::T(FType::Bool);
        }
        Ok((lhs, ty, col))
    }

    fn and(&mut self) -> PResult {
        let (mut lhs, mut ty, col) = self.not()?;
        while self.peek() == &Tok::Kw(Kw::And) {
            self.bump();
            self.want(ty, FType::Bool, col, "'and'")?;
            let (rhs, rty, rcol) = self.not()?;
            self.want(rty, FType::Bool, rcol, "'and'")?;
            lhs = Expr::And(Box::new(lhs), Box::new(rhs));
            ty = Ty::T(FType::Bool);
        }
        Ok((lhs, ty, col))
    }

    fn not(&mut self) -> PResult {
        if self.peek() == &Tok::Kw(Kw::Not) {
            let col = self.bump().1;
            self.nest()?;
            let (e, ty, ecol) = self.not()?;
            self.depth -= 1;
            self.want(ty, FType::Bool, ecol, "'not'")?;
            return Ok((Expr::Not(Box::new(e)), Ty::T(FType::Bool), col));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> PResult {
        let (lhs, lty, col) = self.sum()?;
        let op = match self.peek() {
            Tok::Op("=") | Tok::Op("==") => Some(Cmp::Eq),
            Tok::Op("!=") | Tok::Op("<>") => Some(Cmp::Ne),
            Tok::Op("<") => Some(Cmp::Lt),
            Tok::Op("<=") => Some(Cmp::Le),
            Tok::Op(">") => Some(Cmp::Gt),
            Tok::Op(">=") => Some(Cmp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            let op_col = self.bump().1;
            let (rhs, rty, rcol) = self.sum()?;
            if lty == Ty::Null || rty == Ty::Null {
                return Err(self.err(
                    if lty == Ty::Null { col } else { rcol },
                    "comparing with null is always null: use 'is null' or 'is not null'",
                ));
            }
            if lty != rty {
                return Err(self.err(op_col, format!("cannot compare a {} with a {}", lty.name(), rty.name())));
            }
            if lty == Ty::T(FType::Bool) && !matches!(op, Cmp::Eq | Cmp::Ne) {
                return Err(self.err(op_col, "booleans can only be compared with = or !="));
            }
            return Ok((Expr::Cmp(op, Box::new(lhs), Box::new(rhs)), Ty::T(FType::Bool), col));
        }
        if self.peek() == &Tok::Kw(Kw::Is) {
            self.bump();
            let negated = self.eat_kw(Kw::Not);
            self.expect(Tok::Kw(Kw::Null), "'null' after 'is'")?;
            return Ok((Expr::IsNull { expr: Box::new(lhs), negated }, Ty::T(FType::Bool), col));
        }
        let negated = if self.peek() == &Tok::Kw(Kw::Not)
            && matches!(self.toks[self.pos + 1].0, Tok::Kw(Kw::In) | Tok::Kw(Kw::Between))
        {
            self.bump();
            true
        } else {
            false
        };
        if self.eat_kw(Kw::In) {
            if lty == Ty::Null || lty == Ty::T(FType::Bool) {
                return Err(self.err(col, format!("'in' needs a number or a string on its left, got a {}", lty.name())));
            }
            self.expect(Tok::LParen, "'(' after 'in'")?;
            let mut list = Vec::new();
            loop {
                let neg = self.peek() == &Tok::Op("-");
                if neg {
                    self.bump();
                }
                let (tok, tcol) = self.bump();
                let v = match (tok, lty) {
                    (Tok::Num(n), Ty::T(FType::Num)) => Value::Num(if neg { -n } else { n }),
                    (Tok::Str(s), Ty::T(FType::Str)) if !neg => Value::Str(s),
                    (tok, _) => {
                        return Err(self.err(
                            tcol,
                            format!("'in' lists hold {} literals here, found {}", lty.name(), tok.describe()),
                        ))
                    }
                };
                list.push(v);
                match self.bump() {
                    (Tok::Comma, _) => continue,
                    (Tok::RParen, _) => break,
                    (tok, c) => {
                        return Err(
                            self.err(c, format!("expected ',' or ')' in the 'in' list, found {}", tok.describe()))
                        )
                    }
                }
            }
            return Ok((Expr::In { expr: Box::new(lhs), list, negated }, Ty::T(FType::Bool), col));
        }
        if self.eat_kw(Kw::Between) {
            self.want(lty, FType::Num, col, "'between'")?;
            let (lo, loty, locol) = self.sum()?;
            self.want(loty, FType::Num, locol, "'between'")?;
            self.expect(Tok::Kw(Kw::And), "'and' in 'between ... and ...'")?;
            let (hi, hity, hicol) = self.sum()?;
            self.want(hity, FType::Num, hicol, "'between'")?;
            return Ok((
                Expr::Between { expr: Box::new(lhs), lo: Box::new(lo), hi: Box::new(hi), negated },
                Ty::T(FType::Bool),
                col,
            ));
        }
        Ok((lhs, lty, col))
    }

    fn sum(&mut self) -> PResult {
        let (mut lhs, mut ty, col) = self.product()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => Arith::Add,
                Tok::Op("-") => Arith::Sub,
                _ => return Ok((lhs, ty, col)),
            };
            let op_col = self.bump().1;
            let (rhs, rty, rcol) = self.product()?;
            self.want(
                ty,
                FType::Num,
                col,
                &format!("'{}' at column {op_col}", if op == Arith::Add { "+" } else { "-" }),
            )?;
            self.want(rty, FType::Num, rcol, "arithmetic")?;
            lhs = Expr::Arith(op, Box::new(lhs), Box::new(rhs));
            ty = Ty::T(FType::Num);
        }
    }

    fn product(&mut self) -> PResult {
        let (mut lhs, mut ty, col) = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Op("*") => Arith::Mul,
                Tok::Op("/") => Arith::Div,
                Tok::Op("%") => Arith::Rem,
                _ => return Ok((lhs, ty, col)),
            };
            self.bump();
            let (rhs, rty, rcol) = self.unary()?;
            self.want(ty, FType::Num, col, "arithmetic")?;
            self.want(rty, FType::Num, rcol, "arithmetic")?;
            lhs = Expr::Arith(op, Box::new(lhs), Box::new(rhs));
            ty = Ty::T(FType::Num);
        }
    }

    fn unary(&mut self) -> PResult {
        if self.peek() == &Tok::Op("-") {
            let col = self.bump().1;
            self.nest()?;
            let (e, ty, ecol) = self.unary()?;
            self.depth -= 1;
            self.want(ty, FType::Num, ecol, "unary '-'")?;
            return Ok((Expr::Neg(Box::new(e)), Ty::T(FType::Num), col));
        }
        if self.peek() == &Tok::Op("+") {
            self.bump();
        }
        self.atom()
    }

    fn atom(&mut self) -> PResult {
        let (tok, col) = self.bump();
        match tok {
            Tok::Num(n) => Ok((Expr::Const(Value::Num(n)), Ty::T(FType::Num), col)),
            Tok::Str(s) => Ok((Expr::Const(Value::Str(s)), Ty::T(FType::Str), col)),
            Tok::Kw(Kw::True) => Ok((Expr::Const(Value::Bool(true)), Ty::T(FType::Bool), col)),
            Tok::Kw(Kw::False) => Ok((Expr::Const(Value::Bool(false)), Ty::T(FType::Bool), col)),
            Tok::Kw(Kw::Null) => Ok((Expr::Const(Value::Null), Ty::Null, col)),
            Tok::LParen => {
                let (e, ty, _) = self.or()?;
                self.expect(Tok::RParen, "')'")?;
                Ok((e, ty, col))
            }
            Tok::Ident(name) if self.peek() == &Tok::LParen => self.call(&name, col),
            Tok::Ident(name) => match feature_index(&name.to_ascii_lowercase()) {
                Some(i) => Ok((Expr::Feature(i), Ty::T(FEATURES[i].ty), col)),
                None => Err(self.err(col, unknown_feature_message(&name))),
            },
            Tok::End => Err(self.err(col, "expected an expression, found the end of the rule")),
            other => Err(self.err(col, format!("expected an expression, found {}", other.describe()))),
        }
    }

    fn call(&mut self, name: &str, col: usize) -> PResult {
        let lname = name.to_ascii_lowercase();
        let Some(&(_, func)) = FUNCTIONS.iter().find(|(n, _)| *n == lname) else {
            let names: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
            return Err(self.err(col, format!("unknown function '{name}' (functions: {})", names.join(", "))));
        };
        self.expect(Tok::LParen, "'('")?;
        let mut args = Vec::new();
        if self.peek() != &Tok::RParen {
            loop {
                args.push(self.or()?);
                if self.peek() == &Tok::Comma {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(Tok::RParen, &format!("')' to close {lname}(...)"))?;
        let arity_ok = match func {
            Func::Abs | Func::Ln | Func::Log10 | Func::Sqrt | Func::Exp | Func::Lower | Func::Upper => args.len() == 1,
            Func::Clamp => args.len() == 3,
            Func::Min | Func::Max | Func::Coalesce => !args.is_empty(),
        };
        if !arity_ok {
            let want = match func {
                Func::Clamp => "3 arguments (value, low, high)",
                Func::Min | Func::Max | Func::Coalesce => "at least 1 argument",
                _ => "1 argument",
            };
            return Err(self.err(col, format!("{lname}() takes {want}, got {}", args.len())));
        }
        let ty = match func {
            Func::Lower | Func::Upper => {
                self.want(args[0].1, FType::Str, args[0].2, &format!("{lname}()"))?;
                Ty::T(FType::Str)
            }
            Func::Coalesce => {
                let ty = args.iter().map(|a| a.1).find(|t| *t != Ty::Null).unwrap_or(Ty::Null);
                for a in &args {
                    if a.1 != ty && a.1 != Ty::Null {
                        return Err(self.err(
                            a.2,
                            format!("coalesce() arguments must share one type: {} vs {}", ty.name(), a.1.name()),
                        ));
                    }
                }
                ty
            }
            _ => {
                for a in &args {
                    self.want(a.1, FType::Num, a.2, &format!("{lname}()"))?;
                }
                Ty::T(FType::Num)
            }
        };
        Ok((Expr::Call(func, args.into_iter().map(|a| a.0).collect()), ty, col))
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur.push((prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn unknown_feature_message(name: &str) -> String {
    let lname = name.to_ascii_lowercase();
    let best = FEATURES.iter().map(|d| (levenshtein(&lname, d.name), d.name)).min();
    match best {
        Some((d, candidate)) if d <= 3 => format!("unknown feature '{name}' (did you mean '{candidate}'?)"),
        _ => format!("unknown feature '{name}' (see SELECT name FROM fraud.features)"),
    }
}

/// A rule compiled against the feature registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    expr: Expr,
    numeric: bool,
    features: Vec<usize>,
}

/// Compiles a rule expression; the error points at the offending column.
pub fn compile(src: &str) -> Result<Compiled, RuleError> {
    if src.trim().is_empty() {
        return Err(RuleError { message: "the rule is empty".into(), column: 1, source: src.to_string() });
    }
    if src.len() > 10_000 {
        return Err(RuleError {
            message: "the rule is longer than 10000 bytes".into(),
            column: 1,
            source: src.chars().take(80).collect(),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, src, depth: 0 };
    let (expr, ty, col) = p.or()?;
    if p.peek() != &Tok::End {
        return Err(p.err(
            p.col(),
            format!("unexpected {} after a complete expression (missing 'and'/'or'?)", p.peek().describe()),
        ));
    }
    let numeric = match ty {
        Ty::T(FType::Bool) => false,
        Ty::T(FType::Num) => true,
        other => {
            return Err(p.err(
                col,
                format!("a rule must be a condition (boolean) or a strength (number), this is a {}", other.name()),
            ))
        }
    };
    if tree_depth(&expr) > MAX_TREE_DEPTH {
        return Err(p.err(
            1,
            format!("the rule is too deeply nested (more than {MAX_TREE_DEPTH} levels): split it into several rules"),
        ));
    }
    let mut features = Vec::new();
    collect_features(&expr, &mut features);
    features.sort_unstable();
    features.dedup();
    Ok(Compiled { expr, numeric, features })
}

fn collect_features(e: &Expr, out: &mut Vec<usize>) {
    match e {
        Expr::Const(_) => {}
        Expr::Feature(i) => out.push(*i),
        Expr::Neg(a) | Expr::Not(a) | Expr::IsNull { expr: a, .. } | Expr::In { expr: a, .. } => {
            collect_features(a, out)
        }
        Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
            collect_features(a, out);
            collect_features(b, out);
        }
        Expr::Between { expr, lo, hi, .. } => {
            for x in [expr, lo, hi] {
                collect_features(x, out);
            }
        }
        Expr::Call(_, args) => args.iter().for_each(|a| collect_features(a, out)),
    }
}

/// Evaluation-time value borrowing from the feature vector.
#[derive(Debug, Clone, PartialEq)]
enum V<'a> {
    Null,
    Num(f64),
    Bool(bool),
    Str(Cow<'a, str>),
}

fn num(x: f64) -> V<'static> {
    if x.is_finite() {
        V::Num(x)
    } else {
        V::Null
    }
}

fn of_value(v: &Value) -> V<'_> {
    match v {
        Value::Null => V::Null,
        Value::Num(x) => num(*x),
        Value::Bool(b) => V::Bool(*b),
        Value::Str(s) => V::Str(Cow::Borrowed(s)),
    }
}

fn eval<'a>(e: &'a Expr, fv: &'a FeatureVector) -> V<'a> {
    match e {
        Expr::Const(v) => of_value(v),
        Expr::Feature(i) => of_value(fv.get(*i)),
        Expr::Neg(a) => match eval(a, fv) {
            V::Num(x) => V::Num(-x),
            _ => V::Null,
        },
        Expr::Arith(op, a, b) => match (eval(a, fv), eval(b, fv)) {
            (V::Num(x), V::Num(y)) => match op {
                Arith::Add => num(x + y),
                Arith::Sub => num(x - y),
                Arith::Mul => num(x * y),
                Arith::Div if y == 0.0 => V::Null,
                Arith::Div => num(x / y),
                Arith::Rem if y == 0.0 => V::Null,
                Arith::Rem => num(x % y),
            },
            _ => V::Null,
        },
        Expr::Cmp(op, a, b) => {
            let ord = match (eval(a, fv), eval(b, fv)) {
                (V::Num(x), V::Num(y)) => x.partial_cmp(&y),
                (V::Str(x), V::Str(y)) => Some(x.cmp(&y)),
                (V::Bool(x), V::Bool(y)) => Some(x.cmp(&y)),
                _ => None,
            };
            match ord {
                None => V::Null,
                Some(o) => V::Bool(match op {
                    Cmp::Eq => o.is_eq(),
                    Cmp::Ne => o.is_ne(),
                    Cmp::Lt => o.is_lt(),
                    Cmp::Le => o.is_le(),
                    Cmp::Gt => o.is_gt(),
                    Cmp::Ge => o.is_ge(),
                }),
            }
        }
        Expr::And(a, b) => match eval(a, fv) {
            V::Bool(false) => V::Bool(false),
            l => match (l, eval(b, fv)) {
                (_, V::Bool(false)) => V::Bool(false),
                (V::Bool(true), V::Bool(true)) => V::Bool(true),
                _ => V::Null,
            },
        },
        Expr::Or(a, b) => match eval(a, fv) {
            V::Bool(true) => V::Bool(true),
            l => match (l, eval(b, fv)) {
                (_, V::Bool(true)) => V::Bool(true),
                (V::Bool(false), V::Bool(false)) => V::Bool(false),
                _ => V::Null,
            },
        },
        Expr::Not(a) => match eval(a, fv) {
            V::Bool(b) => V::Bool(!b),
            _ => V::Null,
        },
        Expr::In { expr, list, negated } => {
            let found = match eval(expr, fv) {
                V::Num(x) => list.iter().any(|v| matches!(v, Value::Num(y) if *y == x)),
                V::Str(s) => list.iter().any(|v| matches!(v, Value::Str(y) if y.as_str() == s.as_ref())),
                _ => return V::Null,
            };
            V::Bool(found != *negated)
        }
        Expr::Between { expr, lo, hi, negated } => match (eval(expr, fv), eval(lo, fv), eval(hi, fv)) {
            (V::Num(x), V::Num(l), V::Num(h)) => V::Bool((x >= l && x <= h) != *negated),
            _ => V::Null,
        },
        Expr::IsNull { expr, negated } => V::Bool((eval(expr, fv) == V::Null) != *negated),
        Expr::Call(func, args) => call(*func, args, fv),
    }
}

fn call<'a>(func: Func, args: &'a [Expr], fv: &'a FeatureVector) -> V<'a> {
    let unary = |f: fn(f64) -> Option<f64>| match eval(&args[0], fv) {
        V::Num(x) => f(x).map_or(V::Null, num),
        _ => V::Null,
    };
    match func {
        Func::Abs => unary(|x| Some(x.abs())),
        Func::Ln => unary(|x| (x > 0.0).then(|| x.ln())),
        Func::Log10 => unary(|x| (x > 0.0).then(|| x.log10())),
        Func::Sqrt => unary(|x| (x >= 0.0).then(|| x.sqrt())),
        Func::Exp => unary(|x| Some(x.exp())),
        // Like SQL's greatest/least: NULL arguments are ignored.
        Func::Min | Func::Max => {
            let mut acc: Option<f64> = None;
            for a in args {
                if let V::Num(x) = eval(a, fv) {
                    acc = Some(match acc {
                        None => x,
                        Some(y) if func == Func::Min => x.min(y),
                        Some(y) => x.max(y),
                    });
                }
            }
            acc.map_or(V::Null, V::Num)
        }
        Func::Clamp => match (eval(&args[0], fv), eval(&args[1], fv), eval(&args[2], fv)) {
            (V::Num(x), V::Num(lo), V::Num(hi)) if lo <= hi => V::Num(x.clamp(lo, hi)),
            _ => V::Null,
        },
        Func::Coalesce => args.iter().map(|a| eval(a, fv)).find(|v| *v != V::Null).unwrap_or(V::Null),
        Func::Lower | Func::Upper => match eval(&args[0], fv) {
            V::Str(s) => V::Str(Cow::Owned(if func == Func::Lower { s.to_lowercase() } else { s.to_uppercase() })),
            _ => V::Null,
        },
    }
}

impl Compiled {
    /// Whether the rule is a graded strength (numeric) rather than a condition.
    pub fn is_numeric(&self) -> bool {
        self.numeric
    }

    /// Indices of the features the rule reads.
    pub fn features(&self) -> &[usize] {
        &self.features
    }

    /// How strongly the rule fires, in [0, 1]: 1 for a true condition, the clamped value of a
    /// numeric rule, 0 when false or NULL.
    pub fn strength(&self, fv: &FeatureVector) -> f64 {
        match eval(&self.expr, fv) {
            V::Bool(true) => 1.0,
            V::Num(x) if self.numeric => x.clamp(0.0, 1.0),
            _ => 0.0,
        }
    }

    /// The raw result: `Some(true/false)` or a number, `None` for NULL (for explanations).
    pub fn evaluate(&self, fv: &FeatureVector) -> Value {
        match eval(&self.expr, fv) {
            V::Null => Value::Null,
            V::Num(x) => Value::Num(x),
            V::Bool(b) => Value::Bool(b),
            V::Str(s) => Value::Str(s.into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::f;

    fn fv(pairs: &[(usize, Value)]) -> FeatureVector {
        let mut values = vec![Value::Null; f::COUNT];
        for (i, v) in pairs {
            values[*i] = v.clone();
        }
        FeatureVector { values }
    }

    fn fires(src: &str, v: &FeatureVector) -> f64 {
        compile(src).unwrap_or_else(|e| panic!("{e}")).strength(v)
    }

    #[test]
    fn examples_from_the_issue() {
        let v = fv(&[
            (f::AMOUNT, Value::Num(12000.0)),
            (f::TX_COUNT_1H, Value::Num(11.0)),
            (f::IS_NEW_DEVICE, Value::Bool(true)),
            (f::KM_FROM_HOME, Value::Num(1500.0)),
        ]);
        assert_eq!(fires("amount > 10000", &v), 1.0);
        assert_eq!(fires("amount > 10000 and tx_count_1h > 10", &v), 1.0);
        assert_eq!(fires("tx_count_1h > 10 and is_new_device", &v), 1.0);
        assert_eq!(fires("km_from_home > 1000", &v), 1.0);
        assert_eq!(fires("km_from_home > 2000", &v), 0.0);
        assert_eq!(fires("AMOUNT > 10_000 AND NOT is_new_device", &v), 0.0);
    }

    #[test]
    fn in_between_arithmetic_and_functions() {
        let v = fv(&[
            (f::AMOUNT, Value::Num(9500.0)),
            (f::COUNTRY, Value::Str("NG".into())),
            (f::AMOUNT_ZSCORE, Value::Num(5.5)),
            (f::AMOUNT_SUM_10M, Value::Num(12.0)),
            (f::TX_COUNT_10M, Value::Num(6.0)),
        ]);
        assert_eq!(fires("country in ('NG', 'RU')", &v), 1.0);
        assert_eq!(fires("country not in ('NG', 'RU')", &v), 0.0);
        assert_eq!(fires("lower(country) = 'ng'", &v), 1.0);
        assert_eq!(fires("amount between 9000 and 9999", &v), 1.0);
        assert_eq!(fires("amount not between 9000 and 9999", &v), 0.0);
        assert_eq!(fires("amount in (9500, -1)", &v), 1.0);
        assert_eq!(fires("amount_sum_10m / tx_count_10m < 5 and tx_count_10m >= 4", &v), 1.0);
        assert_eq!(fires("(amount + 500) * 2 % 7 = 20000 % 7", &v), 1.0);
        assert!((fires("clamp((amount_zscore - 3) / 5, 0, 1)", &v) - 0.5).abs() < 1e-12);
        assert_eq!(fires("max(amount_zscore, 100) / 100", &v), 1.0);
        assert_eq!(fires("min(-1, amount)", &v), 0.0, "negative strengths clamp to 0");
        assert_eq!(fires("abs(-2) = 2 and sqrt(16) = 4 and ln(exp(1)) = 1 and log10(1000) = 3", &v), 1.0);
        assert_eq!(fires("coalesce(km_from_home, 0) = 0", &v), 1.0);
        assert_eq!(fires("-- comment\namount > 1 -- trailing", &v), 1.0);
        assert_eq!(fires("amount > 1e3 and amount < 1.5E4", &v), 1.0);
    }

    #[test]
    fn null_semantics_are_sqls() {
        let v = fv(&[(f::AMOUNT, Value::Num(10.0))]);
        assert_eq!(fires("km_from_home > 1000", &v), 0.0);
        assert_eq!(fires("not (km_from_home > 1000)", &v), 0.0, "not NULL is NULL");
        assert_eq!(fires("km_from_home > 1000 or amount > 5", &v), 1.0, "NULL or true");
        assert_eq!(fires("km_from_home > 1000 and amount > 5", &v), 0.0);
        assert_eq!(
            compile("km_from_home > 1000 and amount < 5").unwrap().evaluate(&v),
            Value::Bool(false),
            "NULL and false is false"
        );
        assert_eq!(compile("km_from_home > 1000 and amount > 5").unwrap().evaluate(&v), Value::Null);
        assert_eq!(fires("km_from_home is null", &v), 1.0);
        assert_eq!(fires("amount is not null", &v), 1.0);
        assert_eq!(fires("amount / 0 > 1", &v), 0.0, "division by zero is NULL");
        assert_eq!(fires("(amount / 0) is null", &v), 1.0);
        assert_eq!(fires("ln(0) is null and sqrt(-1) is null and log10(-5) is null", &v), 1.0);
        assert_eq!(fires("exp(1000) is null", &v), 1.0, "overflow is NULL, never Inf");
        assert_eq!(fires("clamp(amount, 5, 1) is null", &v), 1.0);
        assert_eq!(fires("country in ('NG')", &v), 0.0);
        assert_eq!(fires("coalesce(km_from_home) is null", &v), 1.0);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            ("amount > ", 10, "expected an expression"),
            ("amount >> 5", 9, "expected an expression"),
            ("amout > 5", 1, "did you mean 'amount'"),
            ("tx_cnt_1h > 10", 1, "did you mean"),
            ("zzzzzzzzzzzz > 1", 1, "fraud.features"),
            ("amount > 5 amount", 12, "missing 'and'/'or'"),
            ("amount and true", 1, "'and' expects a boolean, got a number"),
            ("country > 5", 9, "cannot compare a string with a number"),
            ("is_new_device > false", 15, "booleans can only be compared"),
            ("amount = null", 10, "use 'is null'"),
            ("country", 1, "a rule must be a condition"),
            ("amount in ('a')", 12, "'in' lists hold number literals"),
            ("country in (1)", 13, "'in' lists hold string literals"),
            ("amount between 1 or 2", 18, "'and' in 'between"),
            ("frobnicate(amount)", 1, "unknown function 'frobnicate'"),
            ("clamp(amount, 1)", 1, "clamp() takes 3 arguments"),
            ("abs(country) > 1", 5, "abs() expects a number"),
            ("country = \"NG\"", 11, "single quotes"),
            ("country = 'NG", 11, "unterminated string"),
            ("amount > 5 $", 12, "unexpected character '$'"),
            ("(amount > 5", 12, "expected ')'"),
            ("", 1, "empty"),
            ("   ", 1, "empty"),
            ("amount > 1e999", 10, "out of range"),
            ("not amount", 5, "'not' expects a boolean"),
            ("amount not like 5", 8, "unexpected 'not'"),
        ];
        for &(src, col, needle) in cases {
            match compile(src) {
                Ok(_) => panic!("{src:?} compiled"),
                Err(e) => {
                    assert!(e.message.contains(needle), "{src:?}: {}", e.message);
                    assert_eq!(e.column, col, "{src:?}: {e}");
                }
            }
        }
        let e = compile("amount > 5 and tx_cnt_1h > 3").unwrap_err();
        assert_eq!(e.to_string(), "unknown feature 'tx_cnt_1h' (did you mean 'tx_count_1h'?) at column 16\n  amount > 5 and tx_cnt_1h > 3\n                 ^");
    }

    #[test]
    fn huge_and_deep_input() {
        assert!(compile(&"amount > 1 and ".repeat(2000)).unwrap_err().message.contains("longer than"));
        let ok = format!("{}amount > 1{}", "(".repeat(60), ")".repeat(60));
        assert_eq!(fires(&ok, &fv(&[(f::AMOUNT, Value::Num(2.0))])), 1.0);
        let deep = format!("{}amount > 1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(compile(&deep).unwrap_err().message.contains("longer than"));
        let deep = format!("{}amount > 1{}", "(".repeat(100), ")".repeat(100));
        assert!(compile(&deep).unwrap_err().message.contains("nests deeper"));
        let nots = format!("{}is_new_device", "not ".repeat(100));
        assert!(compile(&nots).unwrap_err().message.contains("nests deeper"));
        let minus = format!("{}amount > 1", "- ".repeat(100));
        assert!(compile(&minus).unwrap_err().message.contains("nests deeper"));
        let chain = vec!["amount > 1"; 300].join(" and ");
        assert!(compile(&chain).unwrap_err().message.contains("too deeply nested"));
        let chain = vec!["amount > 1"; 100].join(" and ");
        assert_eq!(fires(&chain, &fv(&[(f::AMOUNT, Value::Num(2.0))])), 1.0);
        let long_in = format!("amount in ({})", (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        assert_eq!(fires(&long_in, &fv(&[(f::AMOUNT, Value::Num(999.0))])), 1.0);
    }

    #[test]
    fn reports_features_read() {
        let c = compile("amount > 5 and amount < tx_count_1h").unwrap();
        assert_eq!(c.features(), &[f::AMOUNT, f::TX_COUNT_1H]);
        assert!(!c.is_numeric());
        assert!(compile("amount / 100").unwrap().is_numeric());
    }
}
