use super::*;

const PROBE: Duration = Duration::from_secs(5);

fn failure() -> AttemptOutcome {
    AttemptOutcome::Connect
}

#[test]
fn destinations_are_scheme_host_and_port() {
    assert_eq!(
        destination_of("http://a.example/x?y"),
        "http://a.example:80"
    );
    assert_eq!(
        destination_of("https://a.example:8443/"),
        "https://a.example:8443"
    );
    assert_eq!(destination_of("HTTP://A.Example/"), "http://a.example:80");
    assert_eq!(destination_of("not a url"), "not a url");
}

#[test]
fn failures_are_what_says_the_receiver_is_not_answering() {
    assert!(is_failure(&failure()));
    assert!(is_failure(&AttemptOutcome::Timeout));
    for code in [429, 500, 503] {
        let status = AttemptOutcome::Status {
            code,
            retry_after: None,
        };
        assert!(is_failure(&status), "{code}");
    }
    for code in [200, 301, 404] {
        let status = AttemptOutcome::Status {
            code,
            retry_after: None,
        };
        assert!(!is_failure(&status), "{code}");
    }
    assert!(!is_failure(&AttemptOutcome::Refused));
}

#[test]
fn the_breaker_opens_probes_once_per_interval_and_closes_on_an_answer() {
    let t0 = Instant::now();
    let mut b = Breaker::new(3, PROBE);
    assert_eq!(b.admit(t0), Admit::Send);
    assert!(!b.record(true, t0));
    assert!(!b.record(false, t0), "an answer resets the run");
    assert!(!b.record(true, t0));
    assert!(!b.record(true, t0));
    assert!(b.is_closed());
    assert!(b.record(true, t0), "the third failure in a row opens it");
    assert_eq!(
        b.admit(t0 + Duration::from_secs(1)),
        Admit::Wait(Some(t0 + PROBE))
    );
    // Late answers of attempts already out do not extend it.
    assert!(!b.record(true, t0 + Duration::from_secs(1)));
    let t1 = t0 + PROBE;
    assert_eq!(b.admit(t1), Admit::Probe);
    assert_eq!(b.admit(t1), Admit::Wait(None), "one probe at a time");
    assert!(b.record(true, t1), "a failed probe opens it again");
    assert_eq!(b.admit(t1 + PROBE), Admit::Probe);
    b.probe_lost(t1 + PROBE);
    assert_eq!(
        b.admit(t1 + PROBE),
        Admit::Probe,
        "a lost probe lets the next go"
    );
    assert!(!b.record(false, t1 + PROBE));
    assert_eq!(b.admit(t1 + PROBE), Admit::Send);
}

#[test]
fn destinations_are_served_in_turn_within_their_limit() {
    let now = Instant::now();
    let mut d: Destinations<u32> = Destinations::new(2, 3, PROBE);
    for i in 0..5 {
        d.push("http://a:80", i, now);
    }
    d.push("http://b:80", 100, now);
    d.push("http://b:80", 101, now);
    let mut order = Vec::new();
    while let Some(next) = d.next(now, |_| false) {
        order.push(next.item);
    }
    assert_eq!(order, [0, 100, 1, 101], "round-robin, two in flight each");
    assert_eq!(d.queued(), 3);
    d.done(0, now);
    assert_eq!(d.next(now, |_| false).map(|n| n.item), Some(2));
    assert!(d.next(now, |_| false).is_none());
}

#[test]
fn an_open_breaker_holds_its_destination_only_and_lets_old_firings_out() {
    let now = Instant::now();
    let mut d: Destinations<u32> = Destinations::new(10, 1, PROBE);
    d.push("http://dead:80", 1, now);
    d.push("http://dead:80", 2, now);
    d.push("http://live:80", 3, now);
    let first = d.next(now, |_| false).expect("first");
    assert_eq!(first.item, 1);
    assert!(first.destination.with_breaker(|b| b.record(true, now)));
    d.done(first.index, now);
    // The dead one waits; the live one goes.
    let next = d.next(now, |_| false).expect("live");
    assert_eq!((next.item, next.probe), (3, false));
    assert!(d.next(now, |_| false).is_none());
    assert_eq!(d.next_probe_at(), Some(now + PROBE));
    // A firing too old leaves whatever the breaker says, to be dead-lettered.
    let old = d.next(now, |&item| item == 2).expect("expired");
    assert_eq!((old.item, old.expired, old.probe), (2, true, false));
    // Past the interval, the next one goes as the probe.
    d.done(old.index, now);
    d.push_front(old.index, 2);
    let probe = d.next(now + PROBE, |_| false).expect("probe");
    assert_eq!((probe.item, probe.probe), (2, true));
    assert_eq!(d.drain(), Vec::<u32>::new());
    let report: Vec<_> = d
        .report()
        .map(|(n, q, f, open)| (n.to_string(), q, f, open))
        .collect();
    assert_eq!(
        report,
        [
            ("http://dead:80".to_owned(), 0, 1, true),
            ("http://live:80".to_owned(), 0, 1, false)
        ]
    );
}

#[test]
fn idle_destinations_are_forgotten_and_keep_their_label_when_they_come_back() {
    let now = Instant::now();
    let later = now + FORGET_IDLE_AFTER;
    let mut d: Destinations<u32> = Destinations::new(10, 1, PROBE);
    d.push("http://idle:80", 1, now);
    d.push("http://dead:80", 2, now);
    d.push("http://waiting:80", 3, now);
    for _ in 0..2 {
        let next = d.next(now, |&item| item == 3).expect("a firing");
        if next.item == 2 {
            assert!(next.destination.with_breaker(|b| b.record(true, now)));
        }
        d.done(next.index, now);
    }
    d.push("http://waiting:80", 4, now);
    assert_eq!(d.len(), 3);
    assert_eq!(
        d.forget_idle(now - Duration::from_secs(1)),
        0,
        "busy just now"
    );
    // Idle with a closed breaker: forgotten. The open breaker and the queue are kept.
    assert_eq!(d.forget_idle(later), 1);
    assert_eq!(d.len(), 2);
    let names: Vec<String> = d.report().map(|(n, ..)| n.to_string()).collect();
    assert_eq!(names, ["http://dead:80", "http://waiting:80"]);
    // Seen again: a new slot (the freed index), the same label.
    d.push("http://idle:80", 5, later);
    assert_eq!(d.len(), 3);
    let labels: Vec<String> = d.report().map(|(n, ..)| n.to_string()).collect();
    assert_eq!(
        labels,
        ["http://idle:80", "http://dead:80", "http://waiting:80"]
    );
}
