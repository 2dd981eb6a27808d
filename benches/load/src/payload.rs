//! Shadow-update payloads and topics. Pure: the caller passes the random generator and the time.

/// The default topic: what AWS IoT (and Mosquitto in the benchmark) carries.
pub const AWS_TOPIC_TEMPLATE: &str = "$aws/things/{thing}/shadow/update";

/// `thing-000001` for index 0: the names the directory snapshot uses too.
pub fn thing_name(index: u32) -> String {
    format!("thing-{:06}", index + 1)
}

/// Fills `{thing}` in a topic template.
pub fn topic(template: &str, thing: &str) -> String {
    template.replace("{thing}", thing)
}

/// The subscription filter for a topic template: `{thing}` becomes `+`.
pub fn topic_filter(template: &str) -> String {
    topic(template, "+")
}

/// `temp` at or above this fires the scenario's webhook rule ([`crate::scenario`]).
pub const HOT_TEMP: f64 = 100.0;

/// One shadow update.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub body: String,
    /// `temp` is at or above [`HOT_TEMP`]: the scenario's rules fire a webhook for it.
    pub hot: bool,
}

/// Builds `{"state":{"reported":{"seq":..,"sentAt":..,"temp":..,"pressure":..,
/// "pump1":{"type":"pump","rpm":..}}}}`. A share `fire_ratio` of updates gets a `temp` in
/// [100, 120), the rest in [0, 99.99]. `sentAt` sits under `reported` so that a webhook's default
/// body carries it as `thing.state.sentAt`.
pub fn update(seq: u64, sent_at_ms: u64, fire_ratio: f64, rng: &mut fastrand::Rng) -> Update {
    let hot = rng.f64() < fire_ratio;
    // Two decimals, as devices usually send; cents keep the formatting exact.
    let temp_cents = if hot {
        10_000 + rng.u32(0..2_000)
    } else {
        rng.u32(0..10_000)
    };
    let pressure_tenths = rng.u32(9_000..11_000);
    let rpm = rng.u32(0..3_000);
    let body = format!(
        "{{\"state\":{{\"reported\":{{\"seq\":{seq},\"sentAt\":{sent_at_ms},\"temp\":{}.{:02},\
         \"pressure\":{}.{},\"pump1\":{{\"type\":\"pump\",\"rpm\":{rpm}}}}}}}}}",
        temp_cents / 100,
        temp_cents % 100,
        pressure_tenths / 10,
        pressure_tenths % 10,
    );
    Update { body, hot }
}

/// Reads the publish time back from a message or webhook body: `thing.state.sentAt` (a
/// webhook's default payload), `state.reported.sentAt` (the shadow update itself) or a top-level
/// `sentAt` (a rule body such as `{"sentAt": "${thing.state.sentAt}"}`). Numeric strings count.
pub fn sent_at(body: &serde_json::Value) -> Option<u64> {
    let v = body
        .pointer("/thing/state/sentAt")
        .or_else(|| body.pointer("/state/reported/sentAt"))
        .or_else(|| body.get("sentAt"))?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn names_and_topics() {
        assert_eq!(thing_name(0), "thing-000001");
        assert_eq!(thing_name(99_999), "thing-100000");
        assert_eq!(
            topic(AWS_TOPIC_TEMPLATE, "thing-000001"),
            "$aws/things/thing-000001/shadow/update"
        );
        assert_eq!(topic_filter("thing-update/{thing}"), "thing-update/+");
        assert_eq!(
            topic_filter(AWS_TOPIC_TEMPLATE),
            "$aws/things/+/shadow/update"
        );
    }

    #[test]
    fn update_is_a_shadow_document_with_resources_and_a_sub_thing() {
        let mut rng = fastrand::Rng::with_seed(7);
        let u = update(42, 1_764_160_000_123, 0.0, &mut rng);
        let v: Value = serde_json::from_str(&u.body).expect("valid JSON");
        let r = &v["state"]["reported"];
        assert_eq!(r["seq"], 42);
        assert_eq!(r["sentAt"], 1_764_160_000_123_u64);
        let temp = r["temp"].as_f64().expect("temp");
        assert!((0.0..HOT_TEMP).contains(&temp), "{temp}");
        let p = r["pressure"].as_f64().expect("pressure");
        assert!((900.0..1100.0).contains(&p), "{p}");
        assert_eq!(r["pump1"]["type"], "pump");
        assert!(r["pump1"]["rpm"].as_u64().expect("rpm") < 3000);
        assert!(!u.hot);
        assert_eq!(sent_at(&v), Some(1_764_160_000_123));
    }

    #[test]
    fn fire_ratio_sets_the_share_of_hot_updates() {
        let mut rng = fastrand::Rng::with_seed(1);
        let n = 100_000;
        let mut hot = 0;
        for seq in 0..n {
            let u = update(seq, 0, 0.01, &mut rng);
            let v: Value = serde_json::from_str(&u.body).expect("valid JSON");
            let temp = v["state"]["reported"]["temp"].as_f64().expect("temp");
            assert_eq!(u.hot, temp >= HOT_TEMP, "{}", u.body);
            hot += u64::from(u.hot);
        }
        assert!((800..1200).contains(&hot), "{hot} hot of {n}");
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(update(0, 0, 1.0, &mut rng).hot);
    }

    #[test]
    fn sent_at_from_webhook_bodies() {
        let default_payload = serde_json::json!({
            "rule": {"id": "dev-1"}, "thing": {"thingName": "t", "state": {"temp": 101, "sentAt": 5}}
        });
        assert_eq!(sent_at(&default_payload), Some(5));
        assert_eq!(sent_at(&serde_json::json!({"sentAt": "17"})), Some(17));
        assert_eq!(sent_at(&serde_json::json!({"sentAt": 17.0})), Some(17));
        assert_eq!(sent_at(&serde_json::json!({"other": 1})), None);
        assert_eq!(sent_at(&serde_json::json!({"sentAt": "x"})), None);
    }
}

/// The first `"sentAt":<digits>` in raw bytes, without parsing the JSON: the bare subscriber
/// must cost the broker's ceiling as little as possible.
pub fn sent_at_bytes(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sentAt\":";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod byte_tests {
    use super::*;

    #[test]
    fn sent_at_from_raw_bytes() {
        let mut rng = fastrand::Rng::with_seed(3);
        let u = update(1, 1_764_160_000_999, 0.5, &mut rng);
        assert_eq!(sent_at_bytes(u.body.as_bytes()), Some(1_764_160_000_999));
        assert_eq!(sent_at_bytes(b"{\"sentAt\":\"x\"}"), None);
        assert_eq!(sent_at_bytes(b"{}"), None);
    }
}
