//! Which words of a recogniser's result become an utterance: the words of a final result
//! not yet recorded, and, when a customer speaks long without a pause, a stretch of a
//! partial result's stable words, so it is judged before the speaker stops.

use super::Word;

/// Words to record as one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Start of its first word, seconds of the session's audio.
    pub start_secs: f64,
    /// End of its last word, seconds of the session's audio.
    pub end_secs: f64,
    /// What is said.
    pub text: String,
}

/// The words of `words` after the first `delivered` that `is_new` keeps by their start
/// (seconds of the session); a punctuation mark goes with the word before it.
pub fn new_words(words: &[Word], delivered: usize, is_new: impl Fn(f64) -> bool) -> Vec<&Word> {
    let mut kept = Vec::new();
    let mut keeping = false;
    for word in words.iter().skip(delivered) {
        if !word.punctuation {
            keeping = is_new(word.start_secs);
        }
        if keeping {
            kept.push(word);
        }
    }
    kept
}

/// `words` as one utterance; none when there are no words.
pub fn piece_of(words: &[&Word]) -> Option<Piece> {
    let first = words.iter().find(|w| !w.punctuation)?;
    let last = words.iter().rev().find(|w| !w.punctuation)?;
    let mut text = String::new();
    for word in words {
        if !text.is_empty() && !word.punctuation {
            text.push(' ');
        }
        text.push_str(word.text.trim());
    }
    Some(Piece {
        start_secs: first.start_secs,
        end_secs: last.end_secs.max(first.start_secs),
        text,
    })
}

/// How many of a partial result's words after the first `delivered` are stable.
pub fn stable_after(words: &[Word], delivered: usize) -> usize {
    words
        .iter()
        .skip(delivered)
        .take_while(|w| w.stable)
        .count()
}

/// Whether `piece` is long enough to be recorded before its speaker stops, `min_secs`.
pub fn long_enough(piece: &Piece, min_secs: f64) -> bool {
    piece.end_secs - piece.start_secs >= min_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, start: f64, stable: bool) -> Word {
        let punctuation = text.chars().all(|c| c.is_ascii_punctuation());
        Word {
            text: text.into(),
            start_secs: if punctuation { 0.0 } else { start },
            end_secs: if punctuation { 0.0 } else { start + 0.4 },
            punctuation,
            stable,
        }
    }

    fn said() -> Vec<Word> {
        vec![
            word("This", 1.0, true),
            word("is", 1.5, true),
            word("broken", 2.0, true),
            word(",", 0.0, true),
            word("again", 2.5, true),
            word("today", 3.0, false),
            word(".", 0.0, false),
        ]
    }

    #[test]
    fn words_are_joined_with_their_marks_and_timed_by_the_words() {
        let words = said();
        let all: Vec<&Word> = words.iter().collect();
        let piece = piece_of(&all).unwrap();
        assert_eq!(piece.text, "This is broken, again today.");
        assert_eq!((piece.start_secs, piece.end_secs), (1.0, 3.4));
        assert_eq!(piece_of(&[]), None);
        assert_eq!(piece_of(&[&words[3]]), None, "a mark alone is no utterance");
    }

    #[test]
    fn only_words_after_those_delivered_and_new_by_time_are_kept() {
        let words = said();
        let after_two: Vec<&str> = new_words(&words, 2, |_| true)
            .iter()
            .map(|w| w.text.as_str())
            .collect();
        assert_eq!(after_two, ["broken", ",", "again", "today", "."]);
        // Heard again after a restart: what starts before 2.2 s is already in the log, and
        // its mark with it.
        let fresh: Vec<&str> = new_words(&words, 0, |start| start >= 2.2)
            .iter()
            .map(|w| w.text.as_str())
            .collect();
        assert_eq!(fresh, ["again", "today", "."]);
        assert!(new_words(&words, 7, |_| true).is_empty());
    }

    #[test]
    fn a_partials_stable_run_stops_at_its_first_unstable_word() {
        let words = said();
        assert_eq!(stable_after(&words, 0), 5);
        assert_eq!(stable_after(&words, 3), 2);
        assert_eq!(stable_after(&words, 5), 0);
        let stable: Vec<&Word> = words[..5].iter().collect();
        let piece = piece_of(&stable).unwrap();
        assert!(long_enough(&piece, 1.9));
        assert!(!long_enough(&piece, 2.0));
    }
}
