//! Long numbers, written or spoken: card numbers (Luhn), social security numbers and phone
//! numbers, told apart from order numbers, references, prices and times by their length,
//! grouping, checksum and the words before them.

use super::tokens::{Token, digit_word, repeat_word, word_after, word_before};
use super::{Found, PiiKind};

/// Words before a number that make it a reference of some kind, not a phone number.
const REFERENCE_WORDS: &[&str] = &[
    "order",
    "reference",
    "ref",
    "booking",
    "tracking",
    "invoice",
    "ticket",
    "case",
    "account",
    "policy",
    "confirmation",
    "serial",
    "member",
    "membership",
    "flight",
    "id",
    "customer",
    "parcel",
    "transaction",
    "receipt",
    "claim",
    "voucher",
    "code",
    "pin",
    "sort",
    "model",
    "part",
    "product",
    "item",
    "batch",
    "version",
    "room",
    "contract",
    "loyalty",
    "meter",
    "consignment",
    "shipment",
    "imei",
    "tag",
    "seat",
];

/// Words before a number that make a bare run of digits a phone number.
const PHONE_WORDS: &[&str] = &[
    "phone",
    "mobile",
    "cell",
    "number",
    "call",
    "reach",
    "ring",
    "landline",
    "contact",
    "text",
    "telephone",
    "tel",
    "extension",
    "whatsapp",
    "fax",
    "dial",
    "on",
];

/// Words before nine digits that make them a social security number.
const SSN_WORDS: &[&str] = &["social", "security", "ssn", "ss"];

/// One number in a run: a written group of digits or one spoken digit (or a doubled one).
struct Item {
    /// Its tokens (inclusive).
    first: usize,
    last: usize,
    digits: String,
    spoken: bool,
}

/// Consecutive numbers, joined by spaces, dashes, dots or brackets.
struct Run {
    items: Vec<Item>,
    /// A `+` or `(` before the first item.
    prefix: Option<char>,
    /// The joining marks between items (`' '` where there is none).
    joiners: Vec<char>,
}

impl Run {
    fn digits(&self, items: std::ops::Range<usize>) -> String {
        self.items[items]
            .iter()
            .map(|i| i.digits.as_str())
            .collect()
    }

    fn groups(&self) -> Vec<usize> {
        self.items.iter().map(|i| i.digits.len()).collect()
    }

    /// Said digit by digit: any digit spoken, or every one written alone ("0 7 7 0 ...").
    fn spoken(&self) -> bool {
        self.items.iter().any(|i| i.spoken) || self.items.iter().all(|i| i.digits.len() == 1)
    }

    /// Byte range of `items`, the prefix included when they start the run.
    fn range(&self, tokens: &[Token], items: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let mut start = tokens[self.items[items.start].first].range.start;
        if items.start == 0 && self.prefix.is_some() {
            start = tokens[self.items[0].first - 1].range.start;
        }
        start..tokens[self.items[items.end - 1].last].range.end
    }
}

/// The item starting at token `at`.
fn item(tokens: &[Token], at: usize) -> Option<Item> {
    let token = tokens.get(at)?;
    if !token.is_word {
        return None;
    }
    if token.lower.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Item {
            first: at,
            last: at,
            digits: token.lower.clone(),
            spoken: false,
        });
    }
    if let Some(d) = digit_word(&token.lower) {
        return Some(Item {
            first: at,
            last: at,
            digits: d.to_string(),
            spoken: true,
        });
    }
    let times = repeat_word(&token.lower)?;
    let next = tokens.get(at + 1).filter(|t| t.is_word)?;
    let digit = digit_word(&next.lower)
        .or_else(|| (next.lower.len() == 1).then(|| next.lower.chars().next())?)
        .filter(char::is_ascii_digit)?;
    Some(Item {
        first: at,
        last: at + 1,
        digits: std::iter::repeat_n(digit, times).collect(),
        spoken: true,
    })
}

/// Whether tokens `a` and `b` touch (no space between them).
fn touch(tokens: &[Token], a: usize, b: usize) -> bool {
    tokens[a].range.end == tokens[b].range.start
}

/// Every run of numbers in the text.
fn runs(tokens: &[Token]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let Some(first) = item(tokens, at) else {
            at += 1;
            continue;
        };
        let prefix = (at > 0)
            .then(|| &tokens[at - 1])
            .filter(|t| t.is('+') || t.is('('))
            .and_then(|t| t.lower.chars().next());
        let mut run = Run {
            items: vec![first],
            prefix,
            joiners: Vec::new(),
        };
        loop {
            let end = run.items.last().map_or(at, |i| i.last) + 1;
            if let Some(next) = item(tokens, end) {
                run.items.push(next);
                run.joiners.push(' ');
                continue;
            }
            // Dashes and brackets join; a dot only inside written digits ("415.555"); a
            // comma or the word "dash" only beside spoken ones ("five one, oh five"), so
            // that "1,000" stays a number.
            let last_spoken = run.items.last().is_some_and(|i| i.spoken);
            let joiner = tokens.get(end).filter(|t| {
                t.is('-')
                    || t.is(')')
                    || t.is('(')
                    || (t.is('.') && touch(tokens, end - 1, end))
                    || ((t.is(',') || t.lower == "dash") && last_spoken)
            });
            match joiner.and_then(|j| Some((j, item(tokens, end + 1)?))) {
                Some((j, next))
                    if (!j.is('.') || touch(tokens, end, end + 1))
                        && (!j.is(',') || next.spoken) =>
                {
                    let mark = if j.lower == "dash" {
                        '-'
                    } else {
                        j.lower.chars().next().unwrap_or(' ')
                    };
                    run.joiners.push(mark);
                    run.items.push(next);
                }
                _ => break,
            }
        }
        at = run.items.last().map_or(at, |i| i.last) + 1;
        runs.push(run);
    }
    runs
}

/// Whether the run is part of a code such as `ORD-2024-558812` or `558812-X`, or follows a
/// currency sign.
fn is_code_or_money(tokens: &[Token], run: &Run) -> bool {
    let first = run.items[0].first;
    let last = run.items[run.items.len() - 1].last;
    let letters = |t: &Token| t.is_word && t.lower.bytes().any(|b| b.is_ascii_alphabetic());
    // Tokens a < mark < b, all touching, mark a dash or slash, `word` holding letters.
    let glued = |a: usize, b: usize, word: usize| {
        b < tokens.len()
            && (tokens[a + 1].is('-') || tokens[a + 1].is('/'))
            && letters(&tokens[word])
            && touch(tokens, a, a + 1)
            && touch(tokens, a + 1, b)
    };
    let before = first >= 2 && glued(first - 2, first, first - 2);
    let after = glued(last, last + 2, last + 2);
    let money = first > 0
        && ["$", "£", "€"].contains(&tokens[first - 1].lower.as_str())
        && touch(tokens, first - 1, first);
    before || after || money
}

/// Luhn's checksum.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `digits` could be a card number: 13 to 19 digits, a card network's first digit
/// (2 to 6), and Luhn's checksum.
fn is_card(digits: &str) -> bool {
    (13..=19).contains(&digits.len()) && matches!(digits.as_bytes()[0], b'2'..=b'6') && luhn(digits)
}

/// The items of the run that form a card number: the whole run, or the longest part of it
/// from its start or to its end.
fn card_items(run: &Run) -> Option<std::ops::Range<usize>> {
    let n = run.items.len();
    if is_card(&run.digits(0..n)) {
        return Some(0..n);
    }
    (1..n)
        .rev()
        .flat_map(|len| [0..len, n - len..n])
        .find(|items| is_card(&run.digits(items.clone())))
}

/// Whether nine digits are a valid social security number (no 000, 666 or 9xx area, no 00
/// group, no 0000 serial).
fn is_ssn(digits: &str) -> bool {
    digits.len() == 9
        && !matches!(&digits[..3], "000" | "666")
        && !digits.starts_with('9')
        && &digits[3..5] != "00"
        && &digits[5..] != "0000"
}

/// Whether the run is a phone number by its form (and, for a seven-digit local number
/// without a dash, the words before it).
fn phone_by_form(run: &Run, digits: &str, phone_context: bool) -> bool {
    let groups = run.groups();
    let n = digits.len();
    match run.prefix {
        Some('+') => return (8..=15).contains(&n),
        Some('(') if n == 10 || n == 11 => return true,
        _ => {}
    }
    match (n, groups.as_slice()) {
        (10, [3, 3, 4]) => true,
        (11, [1, 3, 3, 4]) => digits.starts_with('1'),
        (11, [5, 6] | [4, 3, 4] | [3, 4, 4] | [5, 3, 3] | [3, 3, 4, 1]) => digits.starts_with('0'),
        (12, [2, 2, 4, 4] | [2, 4, 6] | [2, 4, 3, 3]) => digits.starts_with("44"),
        (7, [3, 4]) => run.joiners == ['-'] || phone_context,
        (7, _) => run.spoken() && phone_context,
        _ => false,
    }
}

/// Card, social security and phone numbers among the runs of numbers.
pub(super) fn digit_runs(tokens: &[Token]) -> Vec<Found> {
    let mut found = Vec::new();
    for run in runs(tokens) {
        let n = run.items.len();
        let digits = run.digits(0..n);
        if digits.len() < 7 || is_code_or_money(tokens, &run) {
            continue;
        }
        let start = run.items[0].first;
        let reference = word_before(tokens, start, 4, REFERENCE_WORDS);
        if let Some(items) = card_items(&run) {
            found.push(Found {
                kind: PiiKind::Card,
                range: run.range(tokens, items),
            });
            continue;
        }
        let ssn_form = run.groups() == [3, 2, 4] && run.joiners.iter().all(|j| *j != '.');
        let end = run.items[n - 1].last;
        let ssn_context =
            word_before(tokens, start, 16, SSN_WORDS) || word_after(tokens, end, 6, SSN_WORDS);
        if is_ssn(&digits) && (ssn_context || (ssn_form && !reference)) {
            found.push(Found {
                kind: PiiKind::Ssn,
                range: run.range(tokens, 0..n),
            });
            continue;
        }
        let long_enough = (10..=13).contains(&digits.len());
        let phone_context = word_before(tokens, start, 6, PHONE_WORDS);
        let by_context = long_enough && !reference && (run.spoken() || phone_context);
        if phone_by_form(&run, &digits, phone_context && !reference)
            && !(reference && run.prefix.is_none())
            || by_context
        {
            found.push(Found {
                kind: PiiKind::Phone,
                range: run.range(tokens, 0..n),
            });
        }
    }
    found
}
