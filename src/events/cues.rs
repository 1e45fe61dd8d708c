//! Anger cues: words and phrases that say a customer is angry whatever a sentiment model
//! makes of them: threats to leave or to complain, insults, anger words, sarcasm. A model
//! reads "oh brilliant, thanks for nothing" as positive and a calm "it arrived broken" as
//! negative; the escalation rules count an utterance with a cue as angry.
//!
//! Pure: the same text always gives the same cues, so they are recorded with each judgement
//! and replay decides the same.

use std::sync::LazyLock;

use regex::RegexSet;

/// The kinds of cue, each with the patterns that find it (lower-cased text).
const CUES: [(&str, &[&str]); 5] = [
    (
        "threat",
        &[
            r"\b(or|otherwise|else) i('m| am| will|'ll) (cancel|leav|clos|switch|go\b|tak|report|complain)",
            r"\bi('m| am) (cancelling|leaving|switching)\b",
            r"\bcancel (the whole lot|everything)\b",
            r"\b(ombudsman|trading standards|solicitor|lawyer|legal action|small claims)\b",
            r"\btak(e|ing) (my|our) (business|custom|money) elsewhere\b",
            r"\bgoing to (a competitor|\w+ instead)\b",
            r"\b(get|put) me (through )?to (a|your) (manager|supervisor)\b",
        ],
    ),
    (
        "insult",
        &[
            r"\b(useless|rubbish|incompetent|pathetic|clueless|hopeless|a joke)\b",
            r"\bnobody (there )?(has a clue|cares|listens)\b",
            r"\bwaste of (time|money|space)\b",
        ],
    ),
    (
        "anger",
        &[
            r"\b(furious|fuming|livid|outraged|ridiculous|disgrace(ful)?|unacceptable|unbelievable)\b",
            r"\b(sick|tired) (and tired )?of\b",
            r"\bfed up\b",
            r"\bnot good enough\b",
            r"\bare you (joking|kidding|serious|having a laugh)\b",
            r"\bi('m| am) (done|finished) with\b",
            r"\bnot putting up with\b",
            r"\bhumiliat",
            r"\bi swear\b",
        ],
    ),
    (
        "profanity",
        &[
            r"\b(bloody|damn|damned|hell|crap)\b",
            r"\bfor (god'?s|christ'?s|heaven'?s) sake\b",
        ],
    ),
    (
        "sarcasm",
        &[
            r"\bthanks for (absolutely )?nothing\b",
            r"\b(oh|well) (great|brilliant|wonderful|fantastic|marvellous)\b",
            r"\bwhat a (treat|joke)\b",
            r"\bamaze me\b",
            r"\b(really|you've) (outdone|excelled) yourselves?\b",
            r"\b(a )?massive help\b",
        ],
    ),
];

/// Every pattern, and the kind of cue each belongs to.
static PATTERNS: LazyLock<(RegexSet, Vec<&'static str>)> = LazyLock::new(|| {
    let (kinds, patterns): (Vec<&str>, Vec<&str>) = CUES
        .iter()
        .flat_map(|(kind, patterns)| patterns.iter().map(move |p| (*kind, *p)))
        .unzip();
    (
        RegexSet::new(patterns).expect("anger cue patterns are valid"),
        kinds,
    )
});

/// The kinds of anger cue in `text` (`threat`, `insult`, `anger`, `profanity`, `sarcasm`),
/// each once, in that order; empty when there is none.
pub fn anger_cues(text: &str) -> Vec<String> {
    let (set, kinds) = &*PATTERNS;
    let mut found: Vec<String> = Vec::new();
    for i in set.matches(&text.to_lowercase()).iter() {
        if !found.iter().any(|k| k == kinds[i]) {
            found.push(kinds[i].to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threats_insults_and_sarcasm_are_cues() {
        assert_eq!(
            anger_cues("Fix it today or I'm cancelling, you're useless"),
            ["threat", "insult"]
        );
        assert_eq!(
            anger_cues("Oh brilliant, another week. Thanks for nothing."),
            ["sarcasm"]
        );
        assert_eq!(
            anger_cues("I'm taking this to the ombudsman, for god's sake"),
            ["threat", "profanity"]
        );
    }

    #[test]
    fn calm_complaints_and_sad_news_have_none() {
        for text in [
            "Unfortunately the vase arrived broken, could you send another?",
            "My mother passed away and I need to close her account.",
            "I'd like to cancel my booking for Friday, please.",
            "That's a bit disappointing, but thanks for sorting it.",
            "Hello, is this the right number for billing?",
        ] {
            assert!(
                anger_cues(text).is_empty(),
                "{text}: {:?}",
                anger_cues(text)
            );
        }
    }
}
