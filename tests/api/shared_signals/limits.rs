//! What one receiver can make authd keep.

use serde_json::json;

use super::*;
use crate::helpers::spawn_app;

#[tokio::test]
async fn verification_requests_nobody_takes_are_bounded_per_stream() {
    let app = spawn_app().await;
    let key = app.service_key("receiver-spam", &["events.receive"]).await;
    let stream = create_stream(&app, &key, &json!({"delivery": {"method": POLL}})).await;
    let id = stream["stream_id"].as_str().unwrap();
    let verify = |state: String| {
        let app = &app;
        let key = &key;
        async move {
            ssf(
                app,
                "POST",
                "/ssf/verify",
                key,
                Some(&json!({"stream_id": id, "state": state})),
            )
            .await
        }
    };
    for i in 0..100 {
        assert_eq!(verify(format!("s{i}")).await.status, 204);
    }
    let refused = verify("one too many".into()).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("waiting"),
        "{:?}",
        refused.json()
    );
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM ssf_stream_messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(waiting, 100);

    // Taken and acknowledged, they make room again.
    let poll_path = format!("/ssf/poll/{id}");
    let batch = ssf(
        &app,
        "POST",
        &poll_path,
        &key,
        Some(&json!({"maxEvents": 1000, "returnImmediately": true})),
    )
    .await
    .json();
    let jtis: Vec<String> = batch["sets"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(jtis.len(), 100);
    let acked = ssf(
        &app,
        "POST",
        &poll_path,
        &key,
        Some(&json!({"maxEvents": 0, "returnImmediately": true, "ack": jtis})),
    )
    .await;
    assert_eq!(acked.status, 200);
    assert_eq!(verify("again".into()).await.status, 204);
}
