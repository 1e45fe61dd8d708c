//! The live demuxer on Connect-layout MKV: fed a few bytes at a time, and corrupt.

use super::*;

async fn demux_all(bytes: &[u8], piece: usize) -> Vec<Result<Fragment, AudioError>> {
    let (out, mut fragments) = mpsc::channel(4);
    let input = spawn_demux(out);
    let owned = bytes.to_vec();
    let feeding = tokio::spawn(async move {
        for chunk in owned.chunks(piece) {
            if input.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
        }
    });
    let mut all = Vec::new();
    while let Some(next) = fragments.recv().await {
        all.push(next);
    }
    feeding.await.unwrap();
    all
}

#[tokio::test]
async fn connect_fragments_fed_a_few_bytes_at_a_time_come_out_whole() {
    let (customer, agent) = (tone(3 * RATE, 3000), tone(3 * RATE, -1500));
    let mut stream = Vec::new();
    for i in 0..3 {
        let at = ORIGIN_MILLIS + i as u64 * 1000;
        let range = i * RATE..(i + 1) * RATE;
        stream.extend(connect_fragment(
            &fragment_number(i),
            at,
            "contact-1",
            &customer[range.clone()],
            &agent[range],
        ));
    }
    stream.extend(tags_only(&[(
        "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
        "ct-3",
    )]));
    let fragments: Vec<Fragment> = demux_all(&stream, 7)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(fragments.len(), 4, "{fragments:?}");
    for (i, fragment) in fragments[..3].iter().enumerate() {
        assert_eq!(
            fragment.number.as_deref(),
            Some(fragment_number(i).as_str())
        );
        assert_eq!(
            fragment.producer_millis,
            Some(ORIGIN_MILLIS + i as u64 * 1000)
        );
        assert_eq!(fragment.contact_id.as_deref(), Some("contact-1"));
        assert_eq!(fragment.sample_rate, Some(8000));
        assert_eq!(fragment.track_of(crate::audio::mkv::CUSTOMER_TRACK), 1);
        let heard: Vec<u8> = fragment
            .blocks
            .iter()
            .filter(|b| b.track == 1)
            .flat_map(|b| b.pcm.clone())
            .collect();
        let said: Vec<u8> = customer[i * RATE..(i + 1) * RATE]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(heard, said, "fragment {i}'s customer audio");
        assert_eq!(
            fragment.blocks[0].at_millis,
            (ORIGIN_MILLIS + i as u64 * 1000) as i64
        );
    }
    assert_eq!(fragments[3].continuation_token.as_deref(), Some("ct-3"));
}

#[tokio::test]
async fn corrupt_media_is_a_clear_error_not_a_hang() {
    let mut stream = connect_fragment(
        &fragment_number(0),
        ORIGIN_MILLIS,
        "c",
        &tone(RATE, 9),
        &tone(RATE, 9),
    );
    let middle = stream.len() / 2;
    stream.splice(
        middle..middle,
        [0x1a, 0x45, 0xdf, 0xa3, 0x01, 0xff, 0xff].repeat(3),
    );
    stream.extend(std::iter::repeat_n(0xffu8, 64));
    let results = demux_all(&stream, 64).await;
    let last = results.last().expect("an answer");
    assert!(
        matches!(last, Err(AudioError::Malformed(_))),
        "{:?}",
        results
            .iter()
            .map(|r| r.as_ref().map(|f| f.number.clone()))
            .collect::<Vec<_>>()
    );
}
