use super::*;

fn redact(text: &str) -> String {
    Redactor::default().redact(text).text
}

fn kinds(text: &str) -> Vec<PiiKind> {
    Redactor::default()
        .find(text)
        .into_iter()
        .map(|f| f.kind)
        .collect()
}

#[test]
fn card_numbers_are_redacted_written_grouped_or_spoken_when_luhn_holds() {
    assert_eq!(
        redact("my card is 4111 1111 1111 1111 thanks"),
        "my card is [CARD] thanks"
    );
    assert_eq!(redact("it's 5555-5555-5555-4444."), "it's [CARD].");
    assert_eq!(redact("amex 378282246310005"), "amex [CARD]");
    assert_eq!(
        redact("four one one one one one one one one one one one one one one one please"),
        "[CARD] please"
    );
    assert_eq!(
        redact("so that's 4111 1111 one one one one double one double one"),
        "so that's [CARD]"
    );
    // The expiry after the number stays; only the number goes.
    assert_eq!(
        redact("4111 1111 1111 1111 12 27"),
        "[CARD] 12 27",
        "the longest valid start of the run is the card"
    );
    // A Luhn failure, or a first digit no card network uses, is not a card.
    assert_eq!(kinds("booking reference 4111 1111 1111 1112"), vec![]);
    assert_eq!(kinds("serial 9111 1111 1111 1113"), vec![]);
}

#[test]
fn phone_numbers_are_told_apart_from_references_by_form_and_context() {
    assert_eq!(redact("call me on (415) 555-0132"), "call me on [PHONE]");
    assert_eq!(redact("it's 07700 900123"), "it's [PHONE]");
    assert_eq!(
        redact("+44 20 7946 0958 is the office"),
        "[PHONE] is the office"
    );
    assert_eq!(redact("try 415-555-0199"), "try [PHONE]");
    assert_eq!(redact("extension 555-0199"), "extension [PHONE]");
    assert_eq!(
        redact("my mobile is oh seven seven double oh nine oh oh one two three"),
        "my mobile is [PHONE]"
    );
    assert_eq!(kinds("your order number is 7734190012"), vec![]);
    assert_eq!(kinds("order ORD-2024-558812 shipped"), vec![]);
    assert_eq!(kinds("tracking 1Z999AA10123456784"), vec![]);
    assert_eq!(kinds("it was $1499999 in total"), vec![]);
    assert_eq!(kinds("at 10:30 on 03/04/2025 it cost 149.99"), vec![]);
}

#[test]
fn social_security_numbers_need_their_form_or_their_name() {
    assert_eq!(redact("it's 123-45-6789"), "it's [SSN]");
    assert_eq!(
        redact("social security number one two three four five six seven eight nine"),
        "social security number [SSN]"
    );
    assert_eq!(kinds("ssn 000-12-3456"), vec![], "no area 000");
    assert_eq!(kinds("case 123-45-6789"), vec![], "a case number");
}

#[test]
fn emails_are_redacted_written_and_spoken() {
    assert_eq!(
        redact("send it to Jane.Doe+bills@example.co.uk please"),
        "send it to [EMAIL] please"
    );
    assert_eq!(
        redact("my email is jane dot doe at gmail dot com"),
        "my email is [EMAIL]"
    );
    assert_eq!(
        redact("it's j underscore smith at outlook dot co dot uk, yes"),
        "it's [EMAIL], yes"
    );
    assert_eq!(kinds("I'm at home, my email changed"), vec![]);
    assert_eq!(kinds("we arrived at the station dot"), vec![]);
}

#[test]
fn ibans_need_valid_check_digits() {
    assert_eq!(
        redact("IBAN GB82 WEST 1234 5698 7654 32 thanks"),
        "IBAN [IBAN] thanks"
    );
    assert_eq!(redact("DE89370400440532013000"), "[IBAN]");
    assert_eq!(kinds("GB83 WEST 1234 5698 7654 32"), vec![]);
}

#[test]
fn national_insurance_numbers_written_or_spelled() {
    assert_eq!(redact("NI number QQ 12 34 56 C"), "NI number [UK_NI]");
    assert_eq!(redact("it is ab123456d"), "it is [UK_NI]");
    assert_eq!(redact("q q one two three four five six c"), "[UK_NI]");
    assert_eq!(kinds("it is 12 34 56 a lot"), vec![]);
}

#[test]
fn addresses_and_postcodes_but_not_phrases_that_end_in_a_street_word() {
    assert_eq!(
        redact("I live at 221B Baker Street, London NW1 6XE"),
        "I live at [ADDRESS], London [ADDRESS]"
    );
    assert_eq!(redact("it's forty two elm street"), "it's [ADDRESS]");
    assert_eq!(redact("Springfield, IL 62704"), "Springfield, IL [ADDRESS]");
    assert_eq!(kinds("2 items on the way"), vec![]);
    assert_eq!(kinds("it took 3 days to drive"), vec![]);
}

#[test]
fn counts_by_kind_and_nothing_when_disabled() {
    let redacted =
        Redactor::default().redact("card 4111111111111111, mail a@b.com, card 5555555555554444");
    assert_eq!(redacted.text, "card [CARD], mail [EMAIL], card [CARD]");
    assert_eq!(
        redacted.counts,
        Counts::from([(PiiKind::Card, 2), (PiiKind::Email, 1)])
    );
    let off = Redactor::new(&RedactionConfig {
        enabled: false,
        ..RedactionConfig::default()
    });
    assert!(!off.is_enabled());
    assert_eq!(off.redact("4111111111111111").text, "4111111111111111");
    let cards_only = Redactor::new(&RedactionConfig {
        enabled: true,
        kinds: vec![PiiKind::Card],
    });
    assert_eq!(
        cards_only.redact("4111111111111111 a@b.com").text,
        "[CARD] a@b.com"
    );
}

#[test]
fn redacting_twice_changes_nothing_more_and_text_without_values_is_kept_as_is() {
    let once = redact("card 4111 1111 1111 1111 and jane@example.com");
    assert_eq!(redact(&once), once);
    let plain = "Thanks, the sofa came on Wednesday at 10:30 and cost £240.";
    assert_eq!(redact(plain), plain);
    assert_eq!(redact(""), "");
}

#[test]
fn spoken_numbers_run_on_through_commas_and_dashes_but_written_thousands_do_not() {
    assert_eq!(
        redact("it's five one oh five, one oh five one, oh five one oh, five one oh oh"),
        "it's [CARD]"
    );
    assert_eq!(
        redact("the SSN is five five two dash three one dash oh eight eight four"),
        "the SSN is [SSN]"
    );
    assert_eq!(
        redact("it's six oh four, two eight, one one nine three, that's my social"),
        "it's [SSN], that's my social"
    );
    assert_eq!(
        redact("+44 (0) 113 496 0659 is the switchboard"),
        "[PHONE] is the switchboard"
    );
    assert_eq!(redact("it's 0 7 7 0 0 9 0 0 5 3 9"), "it's [PHONE]");
    assert_eq!(kinds("we sold 1,000,000,000 units"), vec![]);
    assert_eq!(kinds("my bag tag number is 0125 482197"), vec![]);
}

#[test]
fn spoken_addresses_with_spelled_letters_or_several_words_in_the_domain() {
    assert_eq!(
        redact("it's r o s s i e at outlook dot com"),
        "it's [EMAIL]"
    );
    assert_eq!(
        redact("the email is orders at hillcrest farm shop dot com"),
        "the email is [EMAIL]"
    );
    assert_eq!(
        redact("my email is n dot fraser two one at virgin media dot com"),
        "my email is [EMAIL]"
    );
    assert_eq!(
        redact("NI number's SP double seven four two one eight D"),
        "NI number's [UK_NI]"
    );
    assert_eq!(
        redact("send it to Flat 12, 8 Harbour View"),
        "send it to [ADDRESS]"
    );
}

#[test]
fn postcodes_said_after_their_name_and_addresses_spelled_with_words_for_letters() {
    assert_eq!(
        redact("the postcode is E C one A one B B"),
        "the postcode is [ADDRESS]"
    );
    assert_eq!(
        redact("my postcode is B thirty three eight T H"),
        "my postcode is [ADDRESS]"
    );
    assert_eq!(kinds("the postcode is wrong on the letter"), vec![]);
    assert_eq!(
        redact("so that's g for golf, o, r, d, o, n at gmail dot com"),
        "so that's [EMAIL]"
    );
}
