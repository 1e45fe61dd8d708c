//! Stand-ins for the services behind the audio reader, for tests with the real SDK clients:
//! speech made by espeak-ng in Connect's MKV layout ([`speech`]), a Kinesis Video stub
//! (GetDataEndpoint, GetMedia; [`kvs`]) and an event-stream Transcribe stub that checks what
//! it is sent as Transcribe would and recognises the test's script in the audio it hears
//! ([`transcribe`]).

pub mod kvs;
pub mod speech;
pub mod transcribe;

use actix_web::HttpResponse;

pub use self::kvs::{KvsScript, KvsStub};
pub use self::speech::{
    CallAudio, RATE, StubFragment, connect_fragment, fragment_number, tags_only,
};
pub use self::transcribe::{Answer, TranscribeStub};

/// An AWS JSON error answer.
fn aws_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status"))
        .insert_header(("x-amzn-errortype", code))
        .insert_header(("x-amzn-requestid", "stub-request"))
        .json(serde_json::json!({"message": message}))
}
