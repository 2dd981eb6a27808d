//! The webhook dispatcher against real HTTP receivers on 127.0.0.1.
//!
//! The tests about waits run under a paused clock (`start_paused`), with the receiver on the
//! same runtime: backoffs, timeouts, reply delays and drain deadlines pass in virtual time, at
//! no real cost, and the elapsed times they assert are exact rather than upper bounds a loaded
//! machine could miss. On loopback the runtime is not idle while a request is on its way (the
//! kernel delivers it within the write), so auto-advance only jumps to the next timer.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sinks::webhook::{
    EnqueueError, WebhookConfig, WebhookDispatcher, WebhookHandle, WebhookRequest, WebhookStats,
};
use support::{config, dead_letters, firing, payload, Receiver, Reply};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DRAIN: Duration = Duration::from_secs(20);
/// Longest real-time wait for a request to reach the receiver.
const WAIT: Duration = Duration::from_secs(10);
/// Slack on an elapsed virtual time: timer rounding (1 ms) and the few ms of jittered backoff.
const EPSILON: Duration = Duration::from_millis(20);

type Handle = WebhookHandle<u32>;

/// A dispatcher whose durable tokens are counted in the returned atomic.
fn start(config: &WebhookConfig) -> (Handle, JoinHandle<WebhookStats>, Arc<AtomicU32>) {
    let durable = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&durable);
    let (handle, task) = WebhookDispatcher::start(
        config,
        Box::new(move |tokens: Vec<u32>| {
            seen.fetch_add(tokens.len() as u32, Ordering::SeqCst);
        }),
    )
    .expect("dispatcher starts");
    (handle, task, durable)
}

async fn enqueue(handle: &Handle, request: WebhookRequest) {
    handle
        .enqueue(vec![request], None, 0)
        .await
        .expect("queued");
}

/// Starts a dispatcher, queues `requests`, closes and waits for the final stats.
async fn deliver_all(config: &WebhookConfig, requests: Vec<WebhookRequest>) -> WebhookStats {
    let (handle, task, durable) = start(config);
    let n = requests.len() as u32;
    for request in requests {
        enqueue(&handle, request).await;
    }
    let stats = close_and_wait(handle, task).await;
    assert_eq!(durable.load(Ordering::SeqCst), n, "every token came back");
    stats
}

async fn close_and_wait(handle: Handle, task: JoinHandle<WebhookStats>) -> WebhookStats {
    handle.close(DRAIN);
    assert_eq!(
        handle
            .enqueue(
                vec![firing(json!({"url": "http://example.com"}), "late")],
                None,
                0
            )
            .await,
        Err(EnqueueError::Closed)
    );
    tokio::time::timeout(DRAIN + Duration::from_secs(5), task)
        .await
        .expect("dispatcher stops within its deadline")
        .expect("dispatcher task")
}

#[tokio::test]
async fn delivers_method_headers_and_json_body() {
    let server = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let request = firing(
        json!({
            "url": server.url("/hooks/temp?thing=thing-001"),
            "method": "PUT",
            "headers": {"X-Token": "s3cret", "X-Count": 3},
            "body": {"alert": "hot", "value": 51}
        }),
        "key-1",
    );
    let stats = deliver_all(&config, vec![request]).await;
    assert_eq!((stats.delivered, stats.failed, stats.attempts), (1, 0, 1));

    let got = server.requests();
    assert_eq!(got.len(), 1);
    let hit = &got[0];
    assert_eq!(hit.method, "PUT");
    assert_eq!(hit.path, "/hooks/temp");
    assert_eq!(hit.header("x-token"), Some("s3cret"));
    assert_eq!(hit.header("x-count"), Some("3"));
    assert_eq!(hit.header("content-type"), Some("application/json"));
    assert_eq!(hit.header("idempotency-key"), Some("key-1"));
    assert!(hit
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("ccstream/")));
    assert_eq!(hit.json(), json!({"alert": "hot", "value": 51}));
    assert!(dead_letters(dir.path()).is_empty());
}

#[tokio::test]
async fn string_body_is_text_and_default_body_is_the_payload() {
    let server = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = firing(
        json!({"url": server.url("/text"), "body": "temp is 51"}),
        "k-text",
    );
    let default = firing(json!({"url": server.url("/default")}), "k-default");
    let stats = deliver_all(&config(dir.path()), vec![text, default]).await;
    assert_eq!(stats.delivered, 2);

    let got = server.requests();
    let text = got
        .iter()
        .find(|r| r.path == "/text")
        .expect("text body sent");
    assert_eq!(text.method, "POST");
    assert_eq!(text.body, b"temp is 51");
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let default = got
        .iter()
        .find(|r| r.path == "/default")
        .expect("default body sent");
    assert_eq!(default.header("content-type"), Some("application/json"));
    assert_eq!(default.json(), payload());
}

#[tokio::test]
async fn retries_after_500_with_the_same_idempotency_key() {
    let server = Receiver::start_here().await;
    server.reply_once("/flaky", Reply::status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = deliver_all(
        &config(dir.path()),
        vec![firing(json!({"url": server.url("/flaky")}), "same-key")],
    )
    .await;
    assert_eq!((stats.delivered, stats.attempts), (1, 2));
    let got = server.requests();
    assert_eq!(got.len(), 2);
    for hit in &got {
        assert_eq!(hit.header("idempotency-key"), Some("same-key"));
        assert_eq!(hit.json(), payload());
    }
    assert!(dead_letters(dir.path()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn retries_429_after_its_retry_after() {
    let server = Receiver::start_here().await;
    server
        .reply_once("/limited", Reply::status(429).header("retry-after", "1"))
        .fallback(Reply::status(204));
    let dir = tempfile::tempdir().expect("tempdir");
    // Jittered backoff alone would wait at most 1 ms; the 1 s wait is the server's Retry-After.
    let config = WebhookConfig {
        backoff_initial_ms: 1,
        backoff_max_ms: 5_000,
        ..config(dir.path())
    };
    let started = Instant::now();
    let stats = deliver_all(
        &config,
        vec![firing(json!({"url": server.url("/limited")}), "k")],
    )
    .await;
    assert_eq!((stats.delivered, stats.attempts), (1, 2));
    // Virtual time: the server's 1 s and nothing more (no backoff on top of it).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(1) + EPSILON,
        "{elapsed:?}"
    );
    let got = server.requests();
    assert_eq!(got.len(), 2);
    let apart = got[1].clock_at - got[0].clock_at;
    assert!(apart >= Duration::from_secs(1), "{apart:?}");
}

#[tokio::test]
async fn a_404_is_final_and_dead_lettered() {
    let server = Receiver::start_here().await;
    server.fallback(Reply::status(404));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = server.url("/missing");
    let stats = deliver_all(
        &config(dir.path()),
        vec![firing(json!({"url": url, "body": "gone?"}), "k-404")],
    )
    .await;
    assert_eq!(
        (stats.failed, stats.attempts, stats.dead_letters),
        (1, 1, 1)
    );
    assert_eq!(server.requests().len(), 1);

    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["rule_id"], "r-1");
    assert_eq!(letter["url"], json!(url));
    assert_eq!(letter["method"], "POST");
    assert_eq!(letter["idempotency_key"], "k-404");
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["last_status"], 404);
    assert_eq!(letter["body_type"], "text");
    assert_eq!(letter["body"], "gone?");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("HTTP 404")),
        "{letter}"
    );
    assert!(letter["time"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn connection_refused_is_retried_then_dead_lettered() {
    // A port that was free a moment ago and has no listener now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = deliver_all(
        &config(dir.path()),
        vec![firing(
            json!({"url": format!("http://127.0.0.1:{port}/x")}),
            "k",
        )],
    )
    .await;
    assert_eq!((stats.failed, stats.attempts), (1, 3));
    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["attempts"], 3);
    assert_eq!(letters[0]["last_status"], serde_json::Value::Null);
    assert_eq!(letters[0]["body"], payload());
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_server_times_out_and_is_retried() {
    let server = Receiver::start_here().await;
    server.fallback(Reply::status(200).after(Duration::from_secs(4)));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        timeout_secs: 1,
        max_attempts: 2,
        ..config(dir.path())
    };
    let started = Instant::now();
    let stats = deliver_all(
        &config,
        vec![firing(json!({"url": server.url("/slow")}), "k")],
    )
    .await;
    assert_eq!((stats.failed, stats.attempts), (1, 2));
    // Virtual time: two attempts cut off at 1 s each, never waiting for the 4 s answer.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(2) + EPSILON,
        "{elapsed:?}"
    );
    assert_eq!(server.requests().len(), 2);
    let letters = dead_letters(dir.path());
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("timed out after 1 s"), "{reason}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = Receiver::start_here().await;
    server.reply_once("/old", Reply::status(302).header("location", "/new"));
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = deliver_all(
        &config(dir.path()),
        vec![firing(json!({"url": server.url("/old")}), "k")],
    )
    .await;
    assert_eq!((stats.failed, stats.attempts), (1, 1));
    let got = server.requests();
    assert_eq!(got.len(), 1, "the redirect target was not requested");
    let letters = dead_letters(dir.path());
    assert_eq!(letters[0]["last_status"], 302);
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("redirects are not followed"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_full_outbox_makes_enqueue_wait_until_deliveries_free_space() {
    let server = Receiver::start_here().await;
    server.fallback(Reply::status(200).after(Duration::from_secs(1)));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        concurrency: 1,
        queue_capacity: 2,
        outbox_max_bytes: 1 << 20,
        ..config(dir.path())
    };
    let (handle, task, durable) = start(&config);
    // 64 KiB bodies: the 1 MiB outbox is full after 16 of them.
    let big = |i: u32| {
        firing(
            json!({"url": server.url("/slow"), "body": "x".repeat(64 * 1024)}),
            &format!("k{i}"),
        )
    };
    let mut sent = 0;
    loop {
        let enqueue = handle.enqueue(vec![big(sent)], None, sent);
        match tokio::time::timeout(Duration::from_millis(100), enqueue).await {
            Ok(result) => result.expect("queued"),
            Err(_) => break,
        }
        sent += 1;
        assert!(sent < 2000, "the outbox never filled");
    }
    assert!(handle.outbox().is_full());
    assert!(handle.outbox().bytes() >= 1 << 20);
    // Taken: what fills the outbox, and what waits behind it (the task's batch of at most 512
    // appends, in practice one channel's worth, and its channel of 256): bounded, whatever the
    // producer does.
    assert!(sent < 16 + 512 + 256 + 10, "{sent}");
    let waiting_from = Instant::now();
    // The one that waited goes in once deliveries (1 s each, one at a time) free space.
    handle
        .enqueue(vec![big(sent)], None, sent)
        .await
        .expect("taken once there is room");
    sent += 1;
    assert!(waiting_from.elapsed() >= Duration::from_secs(1));
    let stats = close_and_wait(handle, task).await;
    // Nothing dropped: what the drain did not deliver stays in the outbox for the next start.
    assert_eq!(stats.enqueued, u64::from(sent));
    assert_eq!(
        stats.delivered + stats.abandoned,
        u64::from(sent),
        "{stats:?}"
    );
    assert!(durable.load(Ordering::SeqCst) >= sent - 1);
}

#[tokio::test]
async fn past_queue_capacity_bodies_wait_on_disk_and_are_read_back() {
    let server = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        queue_capacity: 2,
        concurrency: 2,
        ..config(dir.path())
    };
    let requests: Vec<_> = (0..50)
        .map(|i| {
            firing(
                json!({"url": server.url(&format!("/n/{i}")), "body": {"i": i}}),
                &format!("k{i}"),
            )
        })
        .collect();
    let stats = deliver_all(&config, requests).await;
    assert_eq!((stats.delivered, stats.failed), (50, 0));
    let mut got: Vec<(String, u64)> = server
        .requests()
        .iter()
        .map(|r| {
            (
                r.header("idempotency-key").unwrap_or_default().to_owned(),
                r.json()["i"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    got.sort_by_key(|(_, i)| *i);
    let want: Vec<(String, u64)> = (0..50).map(|i| (format!("k{i}"), i)).collect();
    assert_eq!(got, want, "every body as it was written, once");
}

#[tokio::test]
async fn ip_literal_destinations_are_refused_at_send_time() {
    let server = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let strict = WebhookConfig {
        allow_cidrs: Vec::new(),
        ..config(dir.path())
    };
    let requests = vec![
        firing(json!({"url": server.url("/x")}), "k1"),
        firing(
            json!({"url": format!("http://[::ffff:127.0.0.1]:{}/x", server.port())}),
            "k2",
        ),
        firing(
            json!({"url": format!("http://2130706433:{}/x", server.port())}),
            "k3",
        ),
    ];
    let stats = deliver_all(&strict, requests).await;
    assert_eq!((stats.refused, stats.attempts, stats.delivered), (3, 0, 0));
    assert!(server.requests().is_empty(), "nothing reached the server");
    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 3);
    for letter in letters {
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("points to a loopback address"), "{reason}");
        assert!(reason.contains("webhook.allow_cidrs"), "{reason}");
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
    let server = Receiver::start_here().await;
    let url = format!("http://localhost:{}/hook", server.port());

    // Refused by the resolver: the name is fine, the address it resolves to is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let strict = WebhookConfig {
        allow_cidrs: Vec::new(),
        ..config(dir.path())
    };
    let stats = deliver_all(&strict, vec![firing(json!({"url": url}), "k1")]).await;
    assert_eq!((stats.refused, stats.delivered), (1, 0));
    assert!(server.requests().is_empty());
    let letters = dead_letters(dir.path());
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("webhook host localhost resolves to"),
        "{reason}"
    );
    assert!(reason.contains("a loopback address"), "{reason}");

    // Delivered once 127.0.0.1/32 is allowed (and ::1 where this machine's localhost has it:
    // one refused address refuses the whole name).
    let mut allow = vec!["127.0.0.1/32".to_owned()];
    let addrs: Vec<_> = tokio::net::lookup_host(("localhost", 0))
        .await
        .expect("resolve")
        .collect();
    if addrs.iter().any(|a| a.is_ipv6()) {
        allow.push("::1/128".to_owned());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = WebhookConfig {
        allow_cidrs: allow,
        ..config(dir.path())
    };
    let stats = deliver_all(&allowed, vec![firing(json!({"url": url}), "k2")]).await;
    assert_eq!((stats.delivered, stats.refused), (1, 0));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_drains_what_is_queued() {
    let server = Receiver::start_here().await;
    server.fallback(Reply::status(200).after(Duration::from_millis(100)));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        concurrency: 2,
        ..config(dir.path())
    };
    let requests = (0..8)
        .map(|i| firing(json!({"url": server.url("/d")}), &format!("k{i}")))
        .collect();
    let stats = deliver_all(&config, requests).await;
    assert_eq!((stats.delivered, stats.failed), (8, 0));
    assert_eq!(server.requests().len(), 8);
}

#[tokio::test(start_paused = true)]
async fn what_the_deadline_cuts_off_stays_in_the_outbox_and_is_sent_next_time() {
    let server = Receiver::start_here().await;
    server.fallback(Reply::status(200).after(Duration::from_secs(3)));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        concurrency: 1,
        ..config(dir.path())
    };
    let (handle, task, durable) = start(&config);
    for i in 0..3 {
        enqueue(
            &handle,
            firing(json!({"url": server.url("/slow")}), &format!("k{i}")),
        )
        .await;
    }
    server
        .wait_for(1, WAIT)
        .await
        .expect("the first request is in flight");
    handle.close(Duration::from_millis(300));
    let started = Instant::now();
    let stats = task.await.expect("dispatcher task");
    // Virtual time: the 300 ms deadline, not the 3 s answer.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(300) + EPSILON,
        "{elapsed:?}"
    );
    assert_eq!((stats.abandoned, stats.failed, stats.delivered), (3, 0, 0));
    assert_eq!(durable.load(Ordering::SeqCst), 3);
    assert!(dead_letters(dir.path()).is_empty(), "nothing given up");

    // The next start sends all three, the one already tried included, with their keys.
    server.fallback(Reply::status(200));
    let (handle, task, _) = start(&config);
    server.wait_for(4, WAIT).await.expect("sent again");
    handle.close(DRAIN);
    let stats = task.await.expect("dispatcher task");
    assert_eq!(stats.delivered, 3);
    let mut keys: Vec<String> = server
        .requests()
        .iter()
        .skip(1)
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    keys.sort();
    assert_eq!(keys, ["k0", "k1", "k2"]);
    // Nothing left: a third start has nothing to send.
    let (handle, task, _) = start(&config);
    handle.close(DRAIN);
    assert_eq!(task.await.expect("task").delivered, 0);
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn dropping_every_handle_drains_too() {
    let server = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task, _) = start(&config(dir.path()));
    let clone = handle.clone();
    enqueue(&clone, firing(json!({"url": server.url("/a")}), "k1")).await;
    enqueue(&handle, firing(json!({"url": server.url("/b")}), "k2")).await;
    drop(handle);
    drop(clone);
    let stats = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("task");
    assert_eq!(stats.delivered, 2);
}

#[tokio::test]
async fn a_bad_config_is_refused_at_start() {
    let config = WebhookConfig {
        allow_cidrs: vec!["300.0.0.0/8".into()],
        ..WebhookConfig::default()
    };
    let err = WebhookDispatcher::start(&config, Box::new(|_: Vec<()>| {})).expect_err("bad cidr");
    assert!(err.to_string().contains("webhook.allow_cidrs[0]"), "{err}");
}

/// A dispatcher config for the breaker tests: a destination opens after 2 failures in a row and
/// is probed every 5 s; two firings in flight per destination.
fn breaker_config(dir: &std::path::Path) -> WebhookConfig {
    WebhookConfig {
        concurrency: 4,
        concurrency_per_destination: 2,
        breaker_failures: 2,
        probe_interval_secs: 5,
        ..config(dir)
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_destination_waits_behind_its_breaker_while_the_live_one_flows() {
    let dead = Receiver::start_here().await;
    dead.fallback(Reply::status(503));
    let live = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task, _) = start(&breaker_config(dir.path()));
    for i in 0..20 {
        enqueue(
            &handle,
            firing(json!({"url": dead.url("/d")}), &format!("d{i}")),
        )
        .await;
        enqueue(
            &handle,
            firing(json!({"url": live.url("/l")}), &format!("l{i}")),
        )
        .await;
    }
    live.wait_for(20, WAIT)
        .await
        .expect("the live destination flows");
    // Half a minute of a dead receiver: the attempts that opened the breaker, then one probe
    // per 5 s interval; nothing given up (attempts the breaker did not let out do not count).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let tried = dead.count();
    assert!(
        (3..=12).contains(&tried),
        "{tried} attempts on the dead receiver"
    );
    assert!(dead_letters(dir.path()).is_empty(), "nothing dead-lettered");
    assert_eq!(handle.stats().delivered, 20);

    // It comes back: the next probe closes the breaker and every waiting firing goes, once.
    dead.fallback(Reply::status(200));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = close_and_wait(handle, task).await;
    assert_eq!((stats.delivered, stats.failed), (40, 0), "{stats:?}");
    let mut delivered: Vec<String> = dead
        .requests()
        .iter()
        .skip(tried)
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 20);
}

#[tokio::test(start_paused = true)]
async fn firings_older_than_max_age_are_dead_lettered_with_the_reason() {
    let dead = Receiver::start_here().await;
    dead.fallback(Reply::status(503));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        max_age_secs: 60,
        ..breaker_config(dir.path())
    };
    let (handle, task, _) = start(&config);
    for i in 0..5 {
        enqueue(
            &handle,
            firing(json!({"url": dead.url("/d")}), &format!("d{i}")),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(70)).await;
    let stats = close_and_wait(handle, task).await;
    assert_eq!(
        (stats.expired, stats.failed, stats.delivered),
        (5, 5, 0),
        "{stats:?}"
    );
    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 5);
    for letter in &letters {
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("older than webhook.max_age_secs (60 s)"),
            "{reason}"
        );
    }
    // Finished in the outbox: a restart has nothing to send.
    let (handle, task, _) = start(&config);
    handle.close(DRAIN);
    let stats = task.await.expect("task");
    assert_eq!((stats.delivered, stats.failed, stats.abandoned), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_times_out_does_not_delay_another() {
    // The slow receiver answers after 30 s, past the 5 s timeout; it was sent to first, more
    // firings than the whole concurrency.
    let slow = Receiver::start_here().await;
    slow.fallback(Reply::status(200).after(Duration::from_secs(30)));
    let fast = Receiver::start_here().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task, _) = start(&breaker_config(dir.path()));
    for i in 0..10 {
        enqueue(
            &handle,
            firing(json!({"url": slow.url("/s")}), &format!("s{i}")),
        )
        .await;
    }
    let started = Instant::now();
    for i in 0..10 {
        enqueue(
            &handle,
            firing(json!({"url": fast.url("/f")}), &format!("f{i}")),
        )
        .await;
    }
    fast.wait_for(10, WAIT)
        .await
        .expect("the fast receiver gets its firings");
    // Virtual time: the fast destination never waited for a slot the slow one held (without
    // per-destination limits, the first timeouts would free them after 5 s).
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(20), "{waited:?}");
    handle.close(Duration::from_millis(100));
    let stats = task.await.expect("task");
    assert_eq!(stats.delivered, 10);
}

#[tokio::test]
async fn dead_letters_are_replayed_once_with_their_headers_and_keys() {
    use sinks::webhook::replay::{self, DeadLetters, Filter, Letter, ReplayReport};
    let server = Receiver::start_here().await;
    server.fallback(Reply::status(404));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let requests = (0..3)
        .map(|i| {
            firing(
                json!({"url": server.url("/r"), "headers": {"X-Token": "t"}}),
                &format!("k{i}"),
            )
        })
        .collect();
    let stats = deliver_all(&config, requests).await;
    assert_eq!(stats.failed, 3);
    assert_eq!(dead_letters(dir.path()).len(), 3);

    // The receiver is fixed; the replay sends exactly what failed.
    server.fallback(Reply::status(200));
    let found = DeadLetters::read(dir.path()).expect("read");
    let pending: Vec<&Letter> = found.pending(&Filter::default());
    let report = replay::replay(&config, &pending, Duration::from_secs(20))
        .await
        .expect("replay");
    assert_eq!(
        report,
        ReplayReport {
            sent: 3,
            delivered: 3,
            dead_lettered_again: 0,
            unfinished: 0
        }
    );
    let replayed = &server.requests()[3..];
    let mut keys: Vec<&str> = replayed
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["k0", "k1", "k2"]);
    assert!(replayed.iter().all(|r| r.header("x-token") == Some("t")));
    assert!(replayed.iter().all(|r| r.json() == payload()));

    // Marked: a second replay has nothing to send, and its outbox is gone.
    let again = DeadLetters::read(dir.path()).expect("read");
    assert!(again.pending(&Filter::default()).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("replay-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_cannot_be_sent_lets_the_next_firing_probe() {
    let receiver = Receiver::start_here().await;
    receiver.fallback(Reply::status(503));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebhookConfig {
        max_attempts: 1,
        ..breaker_config(dir.path())
    };
    let (handle, task, _) = start(&config);
    // Two failures open the breaker (and, with one attempt each, are dead-lettered).
    for key in ["f1", "f2"] {
        enqueue(&handle, firing(json!({"url": receiver.url("/d")}), key)).await;
    }
    receiver.wait_for(2, WAIT).await.expect("both tried");
    // The next probe cannot be sent at all (a body over the 1 MiB limit); the one after it can.
    let big = "x".repeat(2 * 1024 * 1024);
    enqueue(
        &handle,
        firing(json!({"url": receiver.url("/d"), "body": big}), "big"),
    )
    .await;
    enqueue(&handle, firing(json!({"url": receiver.url("/d")}), "n")).await;
    receiver.fallback(Reply::status(200));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let keys: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(
        keys,
        ["f1", "f2", "n"],
        "the breaker waited forever for a probe that was never sent"
    );
    let stats = close_and_wait(handle, task).await;
    assert_eq!((stats.delivered, stats.failed), (1, 3), "{stats:?}");
}
