//! PII redaction (`[redaction]`): payment card numbers (Luhn-checked), phone numbers, email
//! addresses, US social security and UK National Insurance numbers, IBANs (mod-97 checked)
//! and street addresses and postcodes, written or spoken ("four one one one ...", "jane dot
//! doe at gmail dot com"), are replaced by their type in brackets (`[CARD]`) before a record
//! becomes an event: what reaches the models, the event log, the summaries, the reject log
//! and the API never holds the value. Each redacted utterance records how many values of
//! each type it lost ([`Counts`]), never the values.

mod numbers;
mod patterns;
mod tokens;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PiiKind {
    /// A payment card number (13 to 19 digits passing the Luhn check).
    Card,
    /// A telephone number.
    Phone,
    /// An email address.
    Email,
    /// A US social security number.
    Ssn,
    /// A UK National Insurance number.
    UkNi,
    /// An international bank account number.
    Iban,
    /// A street address or a postcode.
    Address,
}

impl PiiKind {
    /// Every kind.
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Card,
        PiiKind::Phone,
        PiiKind::Email,
        PiiKind::Ssn,
        PiiKind::UkNi,
        PiiKind::Iban,
        PiiKind::Address,
    ];

    /// The name used in config, events and the placeholder (`CARD`, `UK_NI`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Card => "CARD",
            PiiKind::Phone => "PHONE",
            PiiKind::Email => "EMAIL",
            PiiKind::Ssn => "SSN",
            PiiKind::UkNi => "UK_NI",
            PiiKind::Iban => "IBAN",
            PiiKind::Address => "ADDRESS",
        }
    }
}

impl fmt::Display for PiiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many values of each kind a text lost.
pub type Counts = BTreeMap<PiiKind, u32>;

/// Adds `counts` to the `pii_redacted_total` metric.
pub fn count_in_metrics(counts: &Counts) {
    for (kind, n) in counts {
        crate::metrics::metrics()
            .pii_redacted
            .with_label_values(&[kind.as_str()])
            .inc_by(u64::from(*n));
    }
}

/// The `[redaction]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactionConfig {
    /// Whether anything is redacted (on by default).
    pub enabled: bool,
    /// The kinds redacted (default: all).
    pub kinds: Vec<PiiKind>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kinds: PiiKind::ALL.to_vec(),
        }
    }
}

/// One value found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What it is.
    pub kind: PiiKind,
    /// Where it is (byte offsets).
    pub range: Range<usize>,
}

/// A text with its values replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The text, each value replaced by `[KIND]`.
    pub text: String,
    /// How many values of each kind were replaced.
    pub counts: Counts,
}

/// Finds and replaces personal data in text; cheap to clone (the patterns are compiled once
/// per process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    kinds: Vec<PiiKind>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&RedactionConfig::default())
    }
}

impl Redactor {
    /// A redactor for `config` (one that finds nothing when it is disabled).
    pub fn new(config: &RedactionConfig) -> Self {
        let kinds = if config.enabled {
            config.kinds.clone()
        } else {
            Vec::new()
        };
        Self { kinds }
    }

    /// Whether it redacts anything at all.
    pub fn is_enabled(&self) -> bool {
        !self.kinds.is_empty()
    }

    /// Every value in `text`, in text order, none overlapping another.
    pub fn find(&self, text: &str) -> Vec<Found> {
        if self.kinds.is_empty() || !text.bytes().any(|b| b.is_ascii_alphanumeric()) {
            return Vec::new();
        }
        let tokens = tokens::tokenize(text);
        let mut found: Vec<Found> = Vec::new();
        let mut claim = |candidates: Vec<Found>| {
            for candidate in candidates {
                if self.kinds.contains(&candidate.kind)
                    && !found.iter().any(|f| overlaps(&f.range, &candidate.range))
                {
                    found.push(candidate);
                }
            }
        };
        // The most distinctive forms first, so that an IBAN's digits are not taken for a
        // phone number, nor an email's for anything else.
        claim(patterns::emails(text, &tokens));
        claim(patterns::ibans(text));
        claim(patterns::national_insurance(text, &tokens));
        claim(numbers::digit_runs(&tokens));
        claim(patterns::addresses(text, &tokens));
        found.sort_by_key(|f| f.range.start);
        found
    }

    /// `text` with every value replaced by `[KIND]`, and the counts.
    pub fn redact(&self, text: &str) -> Redacted {
        Self::replace(text, &self.find(text))
    }

    /// `text` redacted in place (untouched, and not copied, when it holds no value);
    /// returns the counts.
    pub fn redact_in_place(&self, text: &mut String) -> Counts {
        let found = self.find(text);
        if found.is_empty() {
            return Counts::new();
        }
        let redacted = Self::replace(text, &found);
        *text = redacted.text;
        redacted.counts
    }

    fn replace(text: &str, found: &[Found]) -> Redacted {
        let mut counts = Counts::new();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.range.start]);
            out.push('[');
            out.push_str(f.kind.as_str());
            out.push(']');
            at = f.range.end;
            *counts.entry(f.kind).or_default() += 1;
        }
        out.push_str(&text[at..]);
        Redacted { text: out, counts }
    }
}

/// Whether two byte ranges share a byte.
pub fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

#[cfg(test)]
mod tests;
