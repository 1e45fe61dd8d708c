use super::*;
use crate::aws::moto;

fn summary(version: u32, text: &str) -> SummaryGenerated {
    SummaryGenerated {
        version,
        model: "meta.llama3-8b-instruct-v1:0".into(),
        prompt_version: 2,
        text: text.into(),
        reason: "billing".into(),
        resolution: "refund issued".into(),
        follow_up: "none".into(),
        customer_sentiment: None,
        chunks: 1,
        tokens_in: 420,
        tokens_out: 60,
        cost_usd: Some(0.0002),
    }
}

/// A sink on a fresh moto bucket, and a raw client to look at it.
async fn sink() -> (S3SummarySink, aws_sdk_s3::Client, String) {
    let sdk = moto::config().await;
    let bucket = moto::unique_name("summaries");
    let config = S3Config {
        bucket: bucket.clone(),
        prefix: default_prefix(),
        force_path_style: true,
        endpoint: AwsEndpoint::default(),
    };
    let sink = S3SummarySink::with_sdk_config(&config, &sdk).unwrap();
    sink.client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let client = sink.client.clone();
    (sink, client, bucket)
}

async fn object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    object.body.collect().await.unwrap().into_bytes().to_vec()
}

#[actix_rt::test]
async fn versions_are_saved_side_by_side_and_never_overwritten() {
    let (sink, client, bucket) = sink().await;
    let id = "c-1/../x y";
    assert!(!sink.has(id, 1).await);
    sink.save(id, &summary(1, "first")).await.unwrap();
    assert!(sink.has(id, 1).await);
    assert!(!sink.has(id, 2).await);

    let json_key = "summaries/c-1%2F..%2Fx%20y/v1.json";
    let md_key = "summaries/c-1%2F..%2Fx%20y/v1.md";
    let v1_json = object(&client, &bucket, json_key).await;
    let value: serde_json::Value = serde_json::from_slice(&v1_json).unwrap();
    assert_eq!(value["contactId"], id);
    assert_eq!(value["version"], 1);
    assert_eq!(value["text"], "first");
    let v1_md = object(&client, &bucket, md_key).await;
    assert_eq!(v1_md, markdown(id, &summary(1, "first")).into_bytes());

    sink.save(id, &summary(2, "second")).await.unwrap();
    assert!(sink.has(id, 2).await);
    assert_eq!(object(&client, &bucket, json_key).await, v1_json);
    assert_eq!(object(&client, &bucket, md_key).await, v1_md);

    // Saving v1 again with the same content is fine; with other content it is refused.
    sink.save(id, &summary(1, "first")).await.unwrap();
    let error = sink.save(id, &summary(1, "rewritten")).await.unwrap_err();
    assert!(error.contains("never overwritten"), "{error}");
    assert_eq!(object(&client, &bucket, json_key).await, v1_json);
    assert_eq!(object(&client, &bucket, md_key).await, v1_md);
}

#[test]
fn config_defaults_and_checks() {
    let config: S3Config = toml::from_str("bucket = \"b\"").unwrap();
    assert_eq!(config.prefix, "summaries/");
    assert!(!config.force_path_style);
    assert!(toml::from_str::<S3Config>("bucket = \"b\"\nprefx = \"x\"").is_err());
    let empty = S3Config {
        bucket: " ".into(),
        ..config
    };
    let sdk = aws_config::SdkConfig::builder().build();
    let error = S3SummarySink::with_sdk_config(&empty, &sdk).err().unwrap();
    assert!(error.contains("bucket"), "{error}");
}
