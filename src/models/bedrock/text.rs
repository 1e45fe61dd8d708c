//! The text of prompts and answers: the frame of a summary prompt, prompts rendered with
//! untrusted pieces quoted and capped, and strict parsing of labels and summary fields.

use super::wire::Family;
use crate::models::Label;
use crate::models::prompts::{ChatFrame, Piece, Prompt, SUMMARY_LINES, SUMMARY_SYSTEM};
use crate::models::summary::{drop_repeats, validate_line};

/// Follows the sentiment question of [`sentiment_prompt`](crate::models::prompts::sentiment_prompt).
pub(super) const SENTIMENT_INSTRUCTION: &str =
    "\nAnswer with exactly one word: POSITIVE, NEUTRAL or NEGATIVE.";

/// The summary line that carries the customer's sentiment at the end of the call.
pub(super) const SENTIMENT_HEADER: &str = "Customer sentiment at end:";

/// The frame of a summary prompt: after the lines [`summary_prompt`] asks for, the
/// sentiment line when wanted, and (native families) the first header written as the
/// answer's start.
///
/// [`summary_prompt`]: crate::models::prompts::summary_prompt
pub(super) fn summary_frame(family: Family, sentiment: bool) -> ChatFrame {
    let mut instruction = String::new();
    if sentiment {
        instruction.push_str(&format!(
            "\n{SENTIMENT_HEADER} <the customer's sentiment at the end of the call: \
             POSITIVE, NEUTRAL or NEGATIVE>"
        ));
    }
    instruction.push_str("\nWrite each line once, every <...> filled in, and nothing else.");
    let answer_start = if family.writes_answer_start() {
        summary_header(0)
    } else {
        ""
    };
    family.frame(SUMMARY_SYSTEM, &instruction, answer_start)
}

/// The header of summary line `i`, e.g. `Reason:`.
pub(super) fn summary_header(i: usize) -> &'static str {
    SUMMARY_LINES[i].header
}

/// A parsed summary answer.
pub(super) struct Fields {
    pub(super) texts: [String; 4],
    pub(super) sentiment: Option<Label>,
}

/// Reads a summary answer strictly: every line is one of the expected headers, each once,
/// with a value that passes [`validate_line`]; the sentiment line exactly when asked for.
pub(super) fn parse_fields(
    text: &str,
    with_sentiment: bool,
    max_chars: usize,
) -> Result<Fields, String> {
    let headers: Vec<&str> = (0..SUMMARY_LINES.len())
        .map(summary_header)
        .chain(with_sentiment.then_some(SENTIMENT_HEADER))
        .collect();
    let mut values: Vec<Option<&str>> = vec![None; headers.len()];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (i, value) = headers
            .iter()
            .enumerate()
            .find_map(|(i, h)| line.strip_prefix(h).map(|v| (i, v.trim())))
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        if values[i].replace(value).is_some() {
            return Err(format!("{:?} given twice", headers[i]));
        }
    }
    let value = |i: usize| values[i].ok_or_else(|| format!("no {:?} line", headers[i]));
    let mut texts: [String; 4] = Default::default();
    for (i, text) in texts.iter_mut().enumerate() {
        *text = validate_line(i, value(i)?, max_chars)
            .map_err(|rejection| format!("{} {rejection}", headers[i]))?;
    }
    drop_repeats(&mut texts);
    let sentiment = match with_sentiment {
        true => {
            let answer = value(SUMMARY_LINES.len())?;
            Some(
                parse_label(answer)
                    .ok_or_else(|| format!("{SENTIMENT_HEADER} {answer:?} is not a label"))?,
            )
        }
        false => None,
    };
    Ok(Fields { texts, sentiment })
}

/// A label answer: the word alone, surrounding whitespace and one trailing period allowed.
pub(super) fn parse_label(answer: &str) -> Option<Label> {
    let answer = answer.trim();
    Label::parse(answer.strip_suffix('.').unwrap_or(answer))
}

/// A prompt as one string. Untrusted pieces (already one line without chat markup) get their
/// double quotes turned into single ones, so they cannot close the quotation that marks them,
/// and are cut in the middle to at most `cap` characters.
pub(super) fn render(prompt: &Prompt, cap: usize) -> String {
    let mut out = String::new();
    for piece in &prompt.pieces {
        match piece {
            Piece::Template(text) => out.push_str(text),
            Piece::Untrusted(text) => out.push_str(&clip(&text.replace('"', "'"), cap)),
        }
    }
    out
}

/// `text` cut to at most `cap` characters, keeping its start and end.
fn clip(text: &str, cap: usize) -> String {
    let n = text.chars().count();
    if n <= cap {
        return text.to_string();
    }
    let head: String = text.chars().take(cap / 2).collect();
    let tail: String = text.chars().skip(n - (cap - cap / 2)).collect();
    format!("{head} … {tail}")
}
