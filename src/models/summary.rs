//! Summary post-processing that needs no model: output validation, chunking of long calls,
//! and the notes that stand for chunks when they are merged.

use super::{ModelError, Turn};

/// Why a generated field was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Nothing, or almost nothing, was generated.
    #[error("empty output")]
    Empty,
    /// The model wrote chat-template syntax.
    #[error("chat-template tokens in output")]
    TemplateTokens,
    /// The same words repeat in a loop.
    #[error("repetition loop")]
    Repetition,
    /// Longer than the bound.
    #[error("output longer than {0} characters")]
    TooLong(usize),
}

/// Markers of chat-template syntax across common GGUF families.
const TEMPLATE_MARKERS: [&str; 6] = [
    "<|",
    "|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "</s>",
];

/// Checks and tidies one generated summary field: trimmed, at least one real word, no template tokens, no
/// repetition loop, at most `max_chars` characters.
pub fn validate_field(raw: &str, max_chars: usize) -> Result<String, Rejection> {
    let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text.trim_matches(|c: char| c == '-' || c == '*' || c.is_whitespace());
    if !text
        .split_whitespace()
        .any(|w| w.chars().filter(|c| c.is_alphanumeric()).count() >= 2)
    {
        return Err(Rejection::Empty);
    }
    if TEMPLATE_MARKERS.iter().any(|m| text.contains(m)) {
        return Err(Rejection::TemplateTokens);
    }
    if is_repetitive(text) {
        return Err(Rejection::Repetition);
    }
    if text.chars().count() > max_chars {
        return Err(Rejection::TooLong(max_chars));
    }
    Ok(text.to_string())
}

/// A repetition loop: one word four times in a row, or any three-word sequence three times.
pub fn is_repetitive(text: &str) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if words.windows(4).any(|w| w.iter().all(|x| *x == w[0])) {
        return true;
    }
    let mut seen = std::collections::HashMap::new();
    words.windows(3).any(|w| {
        let count = seen.entry(w).or_insert(0);
        *count += 1;
        *count >= 3
    })
}

/// Splits a call into chunks whose token counts (by `count`) stay within `budget`. Turns are
/// kept whole where they fit; a turn longer than the budget is cut at word boundaries.
pub fn chunk_turns(turns: &[Turn], budget: usize, count: impl Fn(&str) -> usize) -> Vec<Vec<Turn>> {
    let budget = budget.max(1);
    let mut chunks = Vec::new();
    let mut current: Vec<Turn> = Vec::new();
    let mut used = 0;
    for turn in turns.iter().flat_map(|t| split_turn(t, budget, &count)) {
        let cost = count(&turn.text) + 4;
        if used + cost > budget && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
            used = 0;
        }
        used += cost;
        current.push(turn);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Cuts one turn into pieces of at most `budget` tokens (minus speaker overhead).
fn split_turn(turn: &Turn, budget: usize, count: &impl Fn(&str) -> usize) -> Vec<Turn> {
    let limit = budget.saturating_sub(4).max(1);
    if count(&turn.text) <= limit {
        return vec![turn.clone()];
    }
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for word in turn.text.split_whitespace() {
        let candidate = if piece.is_empty() {
            word.to_string()
        } else {
            format!("{piece} {word}")
        };
        if count(&candidate) > limit && !piece.is_empty() {
            pieces.push(Turn::new(
                turn.participant.clone(),
                std::mem::take(&mut piece),
            ));
            piece = word.to_string();
        } else {
            piece = candidate;
        }
    }
    if !piece.is_empty() {
        pieces.push(Turn::new(turn.participant.clone(), piece));
    }
    pieces
}

/// Whether a field says there is nothing to report (`None`, `N/A`, `Nothing.`, ...).
pub fn says_nothing(text: &str) -> bool {
    let word = text
        .trim()
        .trim_end_matches(['.', '!'])
        .trim()
        .to_ascii_lowercase();
    matches!(
        word.as_str(),
        "none"
            | "n/a"
            | "na"
            | "nothing"
            | "no follow-up"
            | "no follow-up needed"
            | "not applicable"
    )
}

/// Checks one answer line (`SUMMARY_LINES[index]`): the summary itself must say something;
/// a field that says nothing becomes empty.
pub fn validate_line(index: usize, raw: &str, max_chars: usize) -> Result<String, Rejection> {
    let text = validate_field(raw, max_chars)?;
    match (index, says_nothing(&text)) {
        (0, true) => Err(Rejection::Empty),
        (_, true) => Ok(String::new()),
        (_, false) => Ok(text),
    }
}

/// Empties a field that only repeats an earlier one (small models often give the same
/// sentence as the resolution and the follow-up): a field says something new or nothing.
pub fn drop_repeats(fields: &mut [String; 4]) {
    let key = |text: &str| text.trim_end_matches(['.', '!']).trim().to_lowercase();
    for i in 1..fields.len() {
        let this = key(&fields[i]);
        if !this.is_empty() && fields[..i].iter().any(|earlier| key(earlier) == this) {
            fields[i].clear();
        }
    }
}

/// Notes that stand for summarised chunks in the merge pass: one pseudo-turn per chunk, its
/// summary and what it left to do.
pub fn merge_notes(parts: &[[String; 4]]) -> Vec<Turn> {
    parts
        .iter()
        .enumerate()
        .map(|(i, [summary, _, _, follow_up])| {
            let next = match follow_up.is_empty() {
                true => String::new(),
                false => format!(" Still to do: {follow_up}"),
            };
            Turn::new(format!("Part {}", i + 1), format!("{summary}{next}"))
        })
        .collect()
}

/// The turns with something said, or an error when there are none: an empty call has
/// nothing to summarise.
pub fn spoken_turns(turns: &[Turn]) -> Result<Vec<Turn>, ModelError> {
    let spoken: Vec<Turn> = turns
        .iter()
        .filter(|t| !t.text.trim().is_empty())
        .cloned()
        .collect();
    if spoken.is_empty() {
        return Err(ModelError::InvalidOutput(
            "the call has no transcript to summarise".into(),
        ));
    }
    Ok(spoken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn validation_accepts_a_sentence_and_tidies_it() {
        assert_eq!(
            validate_field("  - wants a refund for   order 1234 \n", 200).unwrap(),
            "wants a refund for order 1234"
        );
    }

    #[test]
    fn validation_rejects_bad_output() {
        assert_eq!(validate_field("  ", 200), Err(Rejection::Empty));
        assert_eq!(validate_field(" - . ", 200), Err(Rejection::Empty));
        assert_eq!(validate_field("None.", 200).unwrap(), "None.");
        assert_eq!(
            validate_field("refund issued<|im_end|><|im_start|>user", 200),
            Err(Rejection::TemplateTokens)
        );
        assert_eq!(
            validate_field("the agent said the agent said the agent said the", 200),
            Err(Rejection::Repetition)
        );
        assert_eq!(
            validate_field("no no no no way", 200),
            Err(Rejection::Repetition)
        );
        assert_eq!(
            validate_field(&"word ".repeat(30), 10_000),
            Err(Rejection::Repetition)
        );
        assert_eq!(
            validate_field("a long enough sentence", 10),
            Err(Rejection::TooLong(10))
        );
    }

    #[test]
    fn natural_repeats_are_not_loops() {
        assert!(!is_repetitive(
            "the customer asked about the bill and the agent explained the bill"
        ));
    }

    #[test]
    fn chunks_respect_the_budget_and_keep_order() {
        let turns: Vec<Turn> = (0..20)
            .map(|i| Turn::new("CUSTOMER", format!("turn {i} has five words")))
            .collect();
        let chunks = chunk_turns(&turns, 30, words);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let cost: usize = chunk.iter().map(|t| words(&t.text) + 4).sum();
            assert!(cost <= 30, "chunk over budget: {cost}");
        }
        let flat: Vec<Turn> = chunks.into_iter().flatten().collect();
        assert_eq!(flat, turns);
    }

    #[test]
    fn a_turn_longer_than_the_budget_is_cut_at_words() {
        let long = Turn::new(
            "AGENT",
            (0..100)
                .map(|i| format!("w{i}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let chunks = chunk_turns(std::slice::from_ref(&long), 24, words);
        assert_eq!(chunks.len(), 5);
        let rejoined: Vec<String> = chunks.iter().flatten().map(|t| t.text.clone()).collect();
        assert_eq!(rejoined.join(" "), long.text);
        assert!(chunks.iter().flatten().all(|t| t.participant == "AGENT"));
    }

    #[test]
    fn fields_that_say_nothing_are_empty_and_the_summary_must_say_something() {
        assert_eq!(validate_line(3, "None.", 200).unwrap(), "");
        assert_eq!(validate_line(2, " n/a ", 200).unwrap(), "");
        assert_eq!(
            validate_line(3, "The agent calls back on Monday.", 200).unwrap(),
            "The agent calls back on Monday."
        );
        assert_eq!(validate_line(0, "None", 200), Err(Rejection::Empty));
        assert!(!says_nothing("None of the parcels arrived"));
    }

    #[test]
    fn a_field_repeating_an_earlier_one_is_emptied() {
        let mut fields = [
            "The customer asked for a refund.".to_string(),
            "The blender broke.".into(),
            "A refund was issued.".into(),
            "a refund was issued".into(),
        ];
        drop_repeats(&mut fields);
        assert_eq!(fields[2], "A refund was issued.");
        assert_eq!(fields[3], "");
        let mut distinct = fields.clone();
        distinct[3] = "Send the label.".into();
        let before = distinct.clone();
        drop_repeats(&mut distinct);
        assert_eq!(distinct, before);
    }

    #[test]
    fn notes_carry_each_part_and_what_it_left_to_do() {
        let notes = merge_notes(&[
            ["A asked.".into(), "r".into(), "done".into(), "".into()],
            [
                "B paid.".into(),
                "r".into(),
                "".into(),
                "Refund by Friday.".into(),
            ],
        ]);
        assert_eq!(notes[0].participant, "Part 1");
        assert_eq!(notes[0].text, "A asked.");
        assert_eq!(notes[1].text, "B paid. Still to do: Refund by Friday.");
    }
}
