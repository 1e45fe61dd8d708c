//! Splitting text into words and punctuation marks with their byte offsets, and reading
//! spoken digits ("four", "oh", "double five").

use std::ops::Range;

/// A word (letters and digits) or one punctuation mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    /// Byte offsets in the text.
    pub range: Range<usize>,
    /// The token, lower-cased.
    pub lower: String,
    /// Whether it is a word (else one punctuation mark).
    pub is_word: bool,
}

impl Token {
    /// Whether it is the punctuation mark `c`.
    pub fn is(&self, c: char) -> bool {
        !self.is_word && self.lower.starts_with(c)
    }
}

/// The words and punctuation marks of `text`; whitespace separates and is dropped, and an
/// apostrophe inside a word stays in it ("it's").
pub(super) fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut end = start + c.len_utf8();
        let is_word = c.is_alphanumeric();
        if is_word {
            while let Some(&(i, next)) = chars.peek() {
                let joins = next.is_alphanumeric()
                    || (next == '\''
                        && text[i + 1..]
                            .chars()
                            .next()
                            .is_some_and(char::is_alphabetic));
                if !joins {
                    break;
                }
                end = i + next.len_utf8();
                chars.next();
            }
        }
        tokens.push(Token {
            range: start..end,
            lower: text[start..end].to_lowercase(),
            is_word,
        });
    }
    tokens
}

/// The digit a spoken word stands for (`zero`, `oh`, `o`, `nought`, `one` ... `nine`).
pub(super) fn digit_word(word: &str) -> Option<char> {
    Some(match word {
        "zero" | "oh" | "o" | "nought" => '0',
        "one" => '1',
        "two" => '2',
        "three" => '3',
        "four" => '4',
        "five" => '5',
        "six" => '6',
        "seven" => '7',
        "eight" => '8',
        "nine" => '9',
        _ => return None,
    })
}

/// How many times `double` and `triple` repeat the digit after them.
pub(super) fn repeat_word(word: &str) -> Option<usize> {
    match word {
        "double" => Some(2),
        "triple" => Some(3),
        _ => None,
    }
}

/// Whether any of the `n` tokens before token `at` is one of `words` (a possessive `'s`
/// aside: "social's").
pub(super) fn word_before(tokens: &[Token], at: usize, n: usize, words: &[&str]) -> bool {
    is_among(&tokens[at.saturating_sub(n)..at], words)
}

/// Whether any of the `n` tokens after token `at` is one of `words`.
pub(super) fn word_after(tokens: &[Token], at: usize, n: usize, words: &[&str]) -> bool {
    let from = (at + 1).min(tokens.len());
    is_among(&tokens[from..(at + 1 + n).min(tokens.len())], words)
}

fn is_among(tokens: &[Token], words: &[&str]) -> bool {
    tokens.iter().any(|t| {
        t.is_word && {
            let word = t.lower.strip_suffix("'s").unwrap_or(&t.lower);
            words.contains(&word)
        }
    })
}
