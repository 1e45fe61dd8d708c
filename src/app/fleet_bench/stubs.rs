//! The harness's Bedrock and Connect stubs, and what they received, by what it was for.

use std::collections::HashMap;

use actix_web::HttpResponse;
use serde_json::json;

use crate::aws::stub::{Received, Stub, converse_answer, llama_answer};

/// What the stubs received, by what it was for.
#[derive(Default)]
pub(super) struct Requests {
    /// Sentiment requests per utterance (its `ref` tag).
    pub(super) sentiment: HashMap<String, usize>,
    /// Summary requests per contact.
    pub(super) summary: HashMap<String, usize>,
    /// Connect updates per contact.
    pub(super) connect: HashMap<String, usize>,
}

impl Requests {
    /// Counts what the Bedrock and Connect stubs received.
    pub(super) fn count(bedrock: &Stub, connect: &Stub) -> Self {
        let mut requests = Self::default();
        for request in bedrock.received() {
            let body = String::from_utf8_lossy(&request.body);
            if request.path.ends_with("/converse") {
                if let Some((tag, _)) = last_ref(asked(&body)) {
                    *requests.sentiment.entry(tag).or_default() += 1;
                }
            } else if let Some((_, contact)) = last_ref(&body) {
                *requests.summary.entry(contact).or_default() += 1;
            }
        }
        for request in connect.received() {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
            let contact = body["InitialContactId"].as_str().unwrap_or_default();
            *requests.connect.entry(contact.to_string()).or_default() += 1;
        }
        requests
    }
}

/// The `(ref <contact> u<n>)` tag every utterance of the stream carries: the last one in
/// `text` and its contact.
fn last_ref(text: &str) -> Option<(String, String)> {
    let start = text.rfind("(ref ")? + 5;
    let tag = &text[start..start + text[start..].find(')')?];
    let contact = tag.split(' ').next()?.to_string();
    Some((tag.to_string(), contact))
}

/// The part of a sentiment prompt that holds the utterance asked about.
fn asked(prompt: &str) -> &str {
    prompt
        .rfind("Message from the")
        .map_or("", |at| &prompt[at..])
}

/// Bedrock: Converse answers a label by cue words; the Llama 3 body answers summary lines.
pub(super) fn bedrock(request: &Received, _: usize) -> HttpResponse {
    if !request.is_signed() || request.method != "POST" {
        return HttpResponse::Forbidden().json(json!({"message": "missing SigV4"}));
    }
    if request.path.ends_with("/converse") {
        let asked = asked(&String::from_utf8_lossy(&request.body)).to_lowercase();
        let angry = ["ridiculous", "unacceptable", "worst"]
            .iter()
            .any(|cue| asked.contains(cue));
        converse_answer(if angry { "NEGATIVE" } else { "NEUTRAL" })
    } else {
        llama_answer(
            " The customer asked about a bill and the agent checked it.\nReason: A bill.\nResolution: The agent checked it.\nFollow-up: None.\nCustomer sentiment at end: NEUTRAL",
        )
    }
}

/// Connect: UpdateContactAttributes.
pub(super) fn connect(request: &Received, _: usize) -> HttpResponse {
    if !request.is_signed() || request.path != "/contact/attributes" {
        return HttpResponse::BadRequest().json(json!({"message": "not UpdateContactAttributes"}));
    }
    HttpResponse::Ok().json(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_finds_the_utterance_asked_about_and_its_contact() {
        let body = r#"Earlier in the call: Customer: Hi (ref f-3 u0) Message from the customer: \"Thanks (ref f-3 u2)\""#;
        let asked = &body[body.rfind("Message from the").unwrap()..];
        assert_eq!(last_ref(asked), Some(("f-3 u2".into(), "f-3".into())));
        assert_eq!(last_ref("no tag here"), None);
    }
}
