//! The binary's commands: `check-config` (what an operator runs before a deploy, and an image's
//! smoke test), `healthcheck` (the probe of images without curl) and `dead-letter list|replay`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, Ccstream, LISTEN};

/// Runs `ccstream` in `dir` with `args` and only the given `CCSTREAM_*` variables.
fn ccstream(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("CCSTREAM_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run ccstream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ccstream.toml"),
        "[api]\nlisten = \"0.0.0.0:8088\"\nauth = \"jwt\"\n\
         [api.jwt]\nhs256_secret = \"file-secret-0123456789abcdef0123456789\"\n\
         [store]\nurl = \"postgres://app:db-password@db:5432/rules\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = ccstream(
        dir.path(),
        &["--config", "ccstream.toml", "check-config"],
        &[
            ("CCSTREAM_MQTT__EMBEDDED", "false"),
            (
                "CCSTREAM_MQTT__URL",
                "mqtts://dev:broker-password@iot.example.com:8883",
            ),
            ("CCSTREAM_SHUTDOWN__GRACE_SECS", "45"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for secret in ["file-secret", "db-password", "broker-password"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    // The effective configuration: file, environment and defaults, as TOML.
    let effective: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(effective["api"]["listen"].as_str(), Some("0.0.0.0:8088"));
    assert_eq!(
        effective["api"]["jwt"]["hs256_secret"].as_str(),
        Some("***")
    );
    assert_eq!(
        effective["store"]["url"].as_str(),
        Some("postgres://app:***@db:5432/rules")
    );
    assert_eq!(
        effective["mqtt"]["url"].as_str(),
        Some("mqtts://dev:***@iot.example.com:8883")
    );
    assert_eq!(effective["shutdown"]["grace_secs"].as_integer(), Some(45));
    assert_eq!(effective["webhook"]["timeout_secs"].as_integer(), Some(10));
}

#[test]
fn check_config_refuses_bad_input_in_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap();
        name.to_owned()
    };
    let broken = file("broken.toml", "[api\nlisten = \n");
    let unknown = file("unknown.toml", "[api]\nlistn = \"127.0.0.1:8088\"\n");
    let open = file("open.toml", "[api]\nlisten = \"0.0.0.0:8088\"\n");
    let fine = file("fine.toml", "[api]\nlisten = \"127.0.0.1:8088\"\n");
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Env, &str); 5] = [
        (&broken, &[], "TOML parse error at line 1"),
        (&unknown, &[], "api.listn"),
        (&open, &[], "api.auth"),
        (
            &fine,
            &[("CCSTREAM_WEBHOOK__TIMEOUT_SECS", "0")],
            "webhook.timeout_secs",
        ),
        ("missing.toml", &[], "--config"),
    ];
    for (config, env, names) in cases {
        let (code, stdout, stderr) =
            ccstream(dir.path(), &["--config", config, "check-config"], env);
        assert_eq!(code, 2, "{config}: {stderr}");
        assert!(stdout.is_empty(), "{config}: {stdout}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{config}: one line: {stderr}"
        );
        assert!(
            stderr.starts_with("ccstream: invalid configuration: ") && stderr.contains(names),
            "{config}: {stderr}"
        );
    }
}

#[tokio::test]
async fn healthcheck_asks_the_configured_listener() {
    let mut svc = Ccstream::start(&format!("[api]\nlisten = \"{LISTEN}\"\n")).await;
    let live = svc.run_command(&["healthcheck"]);
    assert!(live.status.success(), "{}", live.output());
    assert_eq!(live.stdout.trim(), "ok");
    // Ready once the embedded broker's subscription is confirmed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = svc.run_command(&["healthcheck", "--ready"]);
        if ready.status.success() {
            assert_eq!(ready.stdout.trim(), "ready");
            break;
        }
        assert_eq!(ready.status.code(), Some(1), "{}", ready.output());
        assert!(Instant::now() < deadline, "never ready: {}", ready.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    svc.stop().await;
    let gone = svc.run_command(&["healthcheck"]);
    assert_eq!(gone.status.code(), Some(1), "{}", gone.output());
    assert!(
        gone.stderr.contains(&format!("{}/healthz", svc.base_url())),
        "names what it asked: {}",
        gone.stderr
    );
}

#[test]
fn dead_letters_are_listed_and_replayed_once() {
    let hooks = common::receiver::Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ccstream.toml"),
        "[webhook]\nallow_cidrs = [\"127.0.0.1/32\"]\n",
    )
    .unwrap();
    // Two letters as the dispatcher writes them, one day apart.
    let letters = std::path::PathBuf::from(dir.path()).join("data/dead-letter");
    std::fs::create_dir_all(&letters).unwrap();
    let line = |time: &str, rule: &str, key: &str, reason: &str| {
        serde_json::json!({
            "time": time, "rule_id": rule, "url": hooks.url("/again"), "method": "POST",
            "headers": [["x-token", "t"]], "idempotency_key": key, "reason": reason,
            "attempts": 3, "last_status": 503, "body_type": "json", "body": {"n": key}
        })
        .to_string()
    };
    std::fs::write(
        letters.join("webhooks-2026-12-01.jsonl"),
        line(
            "2026-12-01T10:00:00.000Z",
            "r1",
            "k1",
            "HTTP 503 (retries exhausted: gave up after 3 attempts)",
        ) + "\n",
    )
    .unwrap();
    std::fs::write(
        letters.join("webhooks-2026-12-02.jsonl"),
        line(
            "2026-12-02T10:00:00.000Z",
            "r2",
            "k2",
            "HTTP 404 (not retried)",
        ) + "\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", "ccstream.toml", "dead-letter"];
        all.extend_from_slice(args);
        ccstream(dir.path(), &all, &[("CCSTREAM_MQTT__EMBEDDED", "false")])
    };

    let (code, stdout, stderr) = run(&["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("retries exhausted"), "{stdout}");
    assert!(stdout.contains("refused by the receiver"), "{stdout}");
    assert!(
        stdout.contains("2 letters, 0 replayed, 2 not replayed"),
        "{stdout}"
    );

    let (code, stdout, _) = run(&["replay", "--since", "2026-12-02", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("1 letters would be replayed"), "{stdout}");
    assert!(stdout.contains(" r2 "), "{stdout}");
    assert_eq!(hooks.count(), 0, "a dry run sends nothing");

    let (code, stdout, _) = run(&["replay", "--since", "yesterday"]);
    assert_ne!(code, 0, "a bad time is refused: {stdout}");

    let (code, stdout, stderr) = run(&["replay", "--rule", "r1"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["sent"], 1, "{report}");
    assert_eq!(report["delivered"], 1, "{report}");
    let got = hooks.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("idempotency-key"), Some("k1"));
    assert_eq!(got[0].header("x-token"), Some("t"));
    assert_eq!(got[0].json(), serde_json::json!({"n": "k1"}));

    // Replayed once: a second replay of everything sends only the other one.
    let (code, stdout, _) = run(&["replay"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["sent"], 1, "{report}");
    let (_, stdout, _) = run(&["list", "--json"]);
    let replayed: u64 = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["replayed"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(replayed, 2, "{stdout}");
}
