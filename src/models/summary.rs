//! Summary post-processing that needs no model: output validation, chunking of long calls,
//! and the rendering of bullets and merge notes.

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

/// The three fields as the summary's bullet text.
pub fn bullets(reason: &str, resolution: &str, follow_up: &str) -> String {
    [reason, resolution, follow_up]
        .iter()
        .map(|f| format!("- {}", ensure_period(f)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ensure_period(text: &str) -> String {
    if text.ends_with(['.', '!', '?']) {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

/// Notes that stand for summarised chunks in the merge pass: one pseudo-turn per chunk.
pub fn merge_notes(parts: &[[String; 3]]) -> Vec<Turn> {
    parts
        .iter()
        .enumerate()
        .map(|(i, [reason, resolution, follow_up])| {
            Turn::new(
                format!("Part {}", i + 1),
                format!(
                    "{} {} Next: {}",
                    ensure_period(reason),
                    ensure_period(resolution),
                    ensure_period(follow_up)
                ),
            )
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
    fn bullets_and_notes_render_each_field() {
        let text = bullets(
            "The customer wants a refund",
            "The agent issued it.",
            "none",
        );
        assert_eq!(
            text,
            "- The customer wants a refund.\n- The agent issued it.\n- none."
        );
        let notes = merge_notes(&[["a b".into(), "c d".into(), "e f".into()]]);
        assert_eq!(notes[0].participant, "Part 1");
        assert_eq!(notes[0].text, "a b. c d. Next: e f.");
    }
}
