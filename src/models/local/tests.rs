use super::session::ends_sentence;

#[test]
fn sentences_end_at_punctuation_after_words_only() {
    assert!(ends_sentence(b"The agent issued a refund."));
    assert!(ends_sentence(b"Is it fixed? "));
    assert!(!ends_sentence(b"The refund of 249."));
    assert!(!ends_sentence(b"The refund of"));
    assert!(!ends_sentence(b"."));
}
