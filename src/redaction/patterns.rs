//! Email addresses (written and spoken), IBANs, UK National Insurance numbers (written and
//! spoken), street addresses and postcodes.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

use super::tokens::{Token, digit_word, repeat_word};
use super::{Found, PiiKind, overlaps};

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("redaction patterns are valid")
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    compile(r"(?i)\b[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b")
});

static IBAN: LazyLock<Regex> =
    LazyLock::new(|| compile(r"(?i)\b[a-z]{2}\d{2}(?: ?[a-z0-9]){10,32}\b"));

/// Capitals with or without spaces, or any case written as one word.
static NI: LazyLock<Regex> = LazyLock::new(|| {
    compile(r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b|(?i)\b[a-z]{2}\d{6}[a-d]\b")
});

/// Two-letter words that do not start a spelled-out National Insurance number.
const NOT_NI_PREFIX: &[&str] = &[
    "is", "it", "in", "on", "at", "to", "of", "my", "me", "we", "he", "be", "do", "go", "so", "no",
    "or", "an", "as", "by", "up", "us", "am", "if", "ok", "oh",
];

/// A flat or unit and a house number (digits or words; either may be missing, not both),
/// one to three name words, a street word.
static STREET: LazyLock<Regex> = LazyLock::new(|| {
    let number_word = "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\
        thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|\
        fifty|sixty|seventy|eighty|ninety|hundred";
    let house =
        format!(r"(?:\d{{1,5}}[a-z]?|(?:(?:{number_word}|and)[ -]+){{0,4}}(?:{number_word}))");
    compile(&format!(
        r"(?i)\b(?:(?:flat|apartment|apt|unit|suite)\.? ?[0-9]+[a-z]?,? +(?:{house} +)?|{house} +)((?:[a-z][a-z'.-]*\s+){{0,2}}[a-z][a-z'.-]*)\s+(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|close|way|court|ct|place|pl|boulevard|blvd|crescent|terrace|gardens|grove|square|sq|hill|park|parade|row|mews|walk|highway|hwy|parkway|pkwy|circle|cir|trail|rise|green|view|estate|wharf|quay|yard|vale|heights)\b\.?"
    ))
});

static UK_POSTCODE: LazyLock<Regex> =
    LazyLock::new(|| compile(r"\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b"));

static US_ZIP: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r"\b(?:A[KLRZ]|C[AOT]|D[CE]|FL|GA|HI|I[ADLN]|K[SY]|LA|M[ADEINOST]|N[CDEHJMVY]|O[HKR]|PA|RI|S[CD]|T[NX]|UT|V[AT]|W[AIVY]) +(\d{5}(?:-\d{4})?)\b",
    )
});

static ZIP_SAID: LazyLock<Regex> =
    LazyLock::new(|| compile(r"(?i)\bzip(?: ?code)?(?: is)?:? *(\d{5}(?:-\d{4})?)\b"));

/// Top-level domains a spoken address may end in.
const TLDS: &[&str] = &[
    "com", "net", "org", "co", "uk", "io", "us", "edu", "gov", "de", "fr", "ie", "info", "biz",
    "me", "ca", "au", "nz", "es", "it", "nl", "eu", "ai", "app", "dev", "in", "ac",
];

/// Words that end the local part of a spoken address when reading back from "at".
const NOT_LOCAL: &[&str] = &[
    "is", "it's", "its", "that's", "here's", "was", "email", "e", "mail", "address", "me", "my",
    "at", "on", "to", "use", "try", "the", "it", "that", "be", "should", "would", "and", "or",
    "please", "send", "sent", "yes", "yeah", "so", "um", "uh", "file", "have", "we", "i", "you",
    "your", "us", "just", "okay", "ok", "now", "new", "old", "account", "under", "of", "as",
    "from",
];

/// Words that join the parts of a spoken address.
fn joins_address(t: &Token) -> bool {
    matches!(
        t.lower.as_str(),
        "dot" | "underscore" | "dash" | "hyphen" | "." | "_" | "-"
    )
}

fn plain_word(t: &Token) -> bool {
    t.is_word && !NOT_LOCAL.contains(&t.lower.as_str()) && !joins_address(t)
}

fn found(kind: PiiKind, range: Range<usize>) -> Found {
    Found { kind, range }
}

/// Written addresses (`jane.doe@example.com`) and spoken ones (`jane dot doe at example dot
/// com`, `j smith at outlook dot co dot uk`).
pub(super) fn emails(text: &str, tokens: &[Token]) -> Vec<Found> {
    let mut out: Vec<Found> = EMAIL
        .find_iter(text)
        .map(|m| found(PiiKind::Email, m.range()))
        .collect();
    for (at, token) in tokens.iter().enumerate() {
        if token.lower != "at" || out.iter().any(|f| f.range.contains(&token.range.start)) {
            continue;
        }
        let Some(domain_end) = spoken_domain(tokens, at + 1) else {
            continue;
        };
        let Some(local_start) = spoken_local(tokens, at) else {
            continue;
        };
        out.push(found(
            PiiKind::Email,
            tokens[local_start].range.start..tokens[domain_end].range.end,
        ));
    }
    out
}

/// The last token of a spoken domain starting at `from`: words joined by "dot" (or "."),
/// ending in a top-level domain; before the first dot, up to three words may follow each
/// other ("virgin media dot com").
fn spoken_domain(tokens: &[Token], from: usize) -> Option<usize> {
    let word = |t: &Token| t.is_word && !joins_address(t);
    let mut at = from;
    let mut end = None;
    let mut dots = 0;
    let mut run = 0;
    while tokens.get(at).is_some_and(word) {
        run += 1;
        if dots > 0 && TLDS.contains(&tokens[at].lower.as_str()) {
            end = Some(at);
        }
        match tokens.get(at + 1) {
            Some(j) if j.lower == "dot" || j.is('.') => {
                dots += 1;
                run = 0;
                at += 2;
            }
            Some(j) if joins_address(j) => at += 2,
            Some(next) if dots == 0 && run < 3 && word(next) => at += 1,
            _ => break,
        }
    }
    end
}

/// The first token of a spoken local part ending before token `at` (the "at"): up to six
/// words and joining words, starting with a word.
fn spoken_local(tokens: &[Token], at: usize) -> Option<usize> {
    let mut start: Option<usize> = None;
    let mut i = at;
    let mut words = 0;
    let letter = |t: &Token| t.is_word && t.lower.chars().count() == 1;
    while i > 0 && words < 8 {
        let t = &tokens[i - 1];
        // A letter spelled with a word for it ("g for golf"), as one.
        if i >= 3 && t.is_word && tokens[i - 2].lower == "for" && letter(&tokens[i - 3]) {
            words += 1;
            start = Some(i - 3);
            i -= 3;
            continue;
        }
        // Letters spelled out one by one, with commas or not ("r o s s i e", "o, r, d").
        let spelled_before = start.is_some_and(|s| letter(&tokens[s]));
        let letter_ends_at = |j: usize| {
            letter(&tokens[j]) || (j >= 2 && tokens[j - 1].lower == "for" && letter(&tokens[j - 2]))
        };
        if t.is(',') && spelled_before && i >= 2 && letter_ends_at(i - 2) {
            i -= 1;
            continue;
        }
        // A letter beside other letters is part of them, even one that is also a word ("i").
        let spelled = letter(t) && (spelled_before || (i >= 2 && letter(&tokens[i - 2])));
        if plain_word(t) || spelled {
            words += 1;
            start = Some(i - 1);
        } else if !(joins_address(t) && start.is_some()) {
            break;
        }
        i -= 1;
    }
    start
}

/// Whether an IBAN's check digits hold (ISO 13616, mod 97).
fn iban_checks(iban: &str) -> bool {
    let length = match &iban[..2] {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "NL" => 18,
        "AT" | "LU" => 20,
        "CH" => 21,
        "DE" | "GB" | "IE" => 22,
        "ES" | "SE" => 24,
        "PT" => 25,
        "FR" | "IT" => 27,
        "PL" => 28,
        _ => 0,
    };
    if (length != 0 && iban.len() != length) || !(15..=34).contains(&iban.len()) {
        return false;
    }
    let rearranged = iban[4..].chars().chain(iban[..4].chars());
    let mut rest = 0u32;
    for c in rearranged {
        let Some(value) = c.to_digit(36) else {
            return false;
        };
        rest = if value < 10 {
            (rest * 10 + value) % 97
        } else {
            (rest * 100 + value) % 97
        };
    }
    rest == 1
}

/// IBANs, with or without spaces, whose check digits hold; a match running on into other
/// words is cut back to its longest valid start.
pub(super) fn ibans(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for m in IBAN.find_iter(text) {
        let candidate = m.as_str();
        let ends: Vec<usize> = candidate
            .char_indices()
            .filter(|&(i, _)| candidate[i + 1..].starts_with(' '))
            .map(|(i, c)| i + c.len_utf8())
            .chain([candidate.len()])
            .collect();
        let valid = ends.into_iter().rev().find(|&end| {
            let compact: String = candidate[..end]
                .chars()
                .filter(|c| *c != ' ')
                .collect::<String>()
                .to_ascii_uppercase();
            iban_checks(&compact)
        });
        if let Some(end) = valid {
            out.push(found(PiiKind::Iban, m.start()..m.start() + end));
        }
    }
    out
}

/// National Insurance numbers: two letters, six digits and a letter A to D, written
/// (`QQ 12 34 56 C`) or spelled out (`q q one two three four five six c`).
pub(super) fn national_insurance(text: &str, tokens: &[Token]) -> Vec<Found> {
    let mut out: Vec<Found> = NI
        .find_iter(text)
        .map(|m| found(PiiKind::UkNi, m.range()))
        .collect();
    let letter =
        |t: &Token| t.is_word && t.lower.len() == 1 && t.lower.as_bytes()[0].is_ascii_alphabetic();
    let mut at = 0;
    while at < tokens.len() {
        let prefix_end = if tokens[at].is_word
            && tokens[at].lower.len() == 2
            && tokens[at].lower.bytes().all(|b| b.is_ascii_alphabetic())
            && !NOT_NI_PREFIX.contains(&tokens[at].lower.as_str())
        {
            Some(at + 1)
        } else if letter(&tokens[at]) && tokens.get(at + 1).is_some_and(letter) {
            Some(at + 2)
        } else {
            None
        };
        let Some(mut i) = prefix_end else {
            at += 1;
            continue;
        };
        let mut digits = 0;
        while digits < 6 {
            let Some(t) = tokens.get(i).filter(|t| t.is_word) else {
                break;
            };
            if digit_word(&t.lower).is_some_and(|_| t.lower.len() > 1) {
                digits += 1;
            } else if let Some(times) = repeat_word(&t.lower) {
                digits += times - 1;
            } else if t.lower.bytes().all(|b| b.is_ascii_digit()) {
                digits += t.lower.len();
            } else {
                break;
            }
            i += 1;
        }
        let suffix = tokens
            .get(i)
            .filter(|t| letter(t) && (b'a'..=b'd').contains(&t.lower.as_bytes()[0]));
        match suffix {
            Some(t) if digits == 6 => {
                let range = tokens[at].range.start..t.range.end;
                if !out.iter().any(|f| overlaps(&f.range, &range)) {
                    out.push(found(PiiKind::UkNi, range));
                }
                at = i + 1;
            }
            _ => at += 1,
        }
    }
    out
}

/// Words that cannot name a street ("2 items on the way" is not an address).
const NOT_STREET_NAME: &[&str] = &[
    "the", "a", "an", "my", "your", "our", "his", "her", "their", "this", "that", "these", "those",
    "of", "in", "on", "at", "to", "for", "from", "and", "or", "is", "was", "it", "by", "with",
    "down", "up", "off", "all", "its", "be", "are", "were", "minutes", "hours", "days", "weeks",
    "months", "years", "items", "times", "more", "than", "about", "just", "only",
];

/// What a postcode said after "postcode" (or "post code", "zip code") is made of: single
/// letters, spoken digits and numbers, and short written groups holding a digit.
fn postcode_part(t: &Token) -> bool {
    const NUMBERS: &[&str] = &[
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "sixty",
        "seventy",
        "eighty",
        "ninety",
        "double",
        "triple",
    ];
    t.is_word
        && (t.lower.chars().count() == 1
            || digit_word(&t.lower).is_some()
            || NUMBERS.contains(&t.lower.as_str())
            || (t.lower.len() <= 4 && t.lower.bytes().any(|b| b.is_ascii_digit())))
}

/// Postcodes spoken after the word for them ("my postcode is E C one A one B B").
fn spoken_postcodes(tokens: &[Token]) -> Vec<Found> {
    let mut out = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        let named = token.lower == "postcode"
            || (token.lower == "code"
                && at > 0
                && matches!(tokens[at - 1].lower.as_str(), "post" | "zip"));
        if !named {
            continue;
        }
        let mut from = at + 1;
        while tokens
            .get(from)
            .is_some_and(|t| matches!(t.lower.as_str(), "is" | "it's" | "'s" | ":" | "'"))
        {
            from += 1;
        }
        let end = (from..tokens.len().min(from + 10))
            .take_while(|&i| postcode_part(&tokens[i]))
            .last();
        if let Some(end) = end.filter(|&end| end > from) {
            out.push(found(
                PiiKind::Address,
                tokens[from].range.start..tokens[end].range.end,
            ));
        }
    }
    out
}

/// Street addresses (house number, name, street word) and postcodes (UK, written or spoken
/// after "postcode", or a US ZIP after a state or "zip code").
pub(super) fn addresses(text: &str, tokens: &[Token]) -> Vec<Found> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(caps) = STREET.captures_at(text, from) {
        let whole = caps.get(0).expect("a match has group 0");
        let name = caps.get(1).map_or("", |m| m.as_str());
        let named = name
            .split_whitespace()
            .all(|w| !NOT_STREET_NAME.contains(&w.to_lowercase().as_str()));
        if named {
            out.push(found(PiiKind::Address, whole.range()));
            from = whole.end();
        } else {
            from = whole.start()
                + text[whole.start()..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
        }
    }
    let groups = [&*US_ZIP, &*ZIP_SAID]
        .into_iter()
        .flat_map(|r| r.captures_iter(text).filter_map(|c| c.get(1)));
    out.extend(
        UK_POSTCODE
            .find_iter(text)
            .chain(groups)
            .map(|m| found(PiiKind::Address, m.range())),
    );
    out.extend(spoken_postcodes(tokens));
    out
}
