use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn special_ranges_are_refused_by_default() {
    let policy = SsrfPolicy::strict();
    let cases = [
        ("127.0.0.1", Reason::Loopback),
        ("127.255.0.9", Reason::Loopback),
        ("::1", Reason::Loopback),
        ("10.1.2.3", Reason::Private),
        ("172.16.0.1", Reason::Private),
        ("172.31.255.255", Reason::Private),
        ("192.168.1.1", Reason::Private),
        ("fc00::1", Reason::UniqueLocal),
        ("fdff::1", Reason::UniqueLocal),
        ("fec0::1", Reason::SiteLocal),
        ("169.254.169.254", Reason::LinkLocal),
        ("fe80::1", Reason::LinkLocal),
        ("0.0.0.0", Reason::Unspecified),
        ("::", Reason::Unspecified),
        ("0.1.2.3", Reason::ThisNetwork),
        ("100.64.0.1", Reason::SharedCgnat),
        ("100.127.255.255", Reason::SharedCgnat),
        ("255.255.255.255", Reason::Broadcast),
        ("224.0.0.1", Reason::Multicast),
        ("ff02::1", Reason::Multicast),
        ("240.0.0.1", Reason::Reserved),
        // IPv4 carried in IPv6 is judged by the IPv4 address.
        ("::ffff:127.0.0.1", Reason::Loopback),
        ("::ffff:10.0.0.1", Reason::Private),
        ("::ffff:169.254.169.254", Reason::LinkLocal),
        ("::127.0.0.1", Reason::Loopback),
        ("::10.0.0.1", Reason::Private),
        ("64:ff9b::a9fe:a9fe", Reason::LinkLocal),
    ];
    for (addr, reason) in cases {
        assert_eq!(policy.is_refused(ip(addr)), Some(reason), "{addr}");
    }
}

#[test]
fn public_addresses_pass() {
    let policy = SsrfPolicy::strict();
    for addr in [
        "93.184.216.34",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ] {
        assert_eq!(policy.is_refused(ip(addr)), None, "{addr}");
    }
}

#[test]
fn registry_ranges_are_refused_by_default() {
    let policy = SsrfPolicy::strict();
    let cases = [
        ("192.0.0.1", Reason::ProtocolAssignment),
        ("192.0.0.8", Reason::ProtocolAssignment),
        ("192.0.0.170", Reason::ProtocolAssignment),
        ("192.0.0.255", Reason::ProtocolAssignment),
        ("192.0.2.1", Reason::Documentation),
        ("198.51.100.7", Reason::Documentation),
        ("203.0.113.255", Reason::Documentation),
        ("198.18.0.1", Reason::Benchmarking),
        ("198.19.255.255", Reason::Benchmarking),
        ("192.88.99.1", Reason::Deprecated6to4Relay),
        ("64:ff9b:1::a9fe:a9fe", Reason::LocalTranslation),
        ("64:ff9b:1:ffff::808:808", Reason::LocalTranslation),
        ("100::1", Reason::DiscardOnly),
        ("100::ffff:ffff:ffff:ffff", Reason::DiscardOnly),
        ("100:0:0:1::1", Reason::DiscardOnly),
        // 2001::/23: Teredo, deprecated ORCHID, and the rest of the block.
        ("2001::1", Reason::ProtocolAssignment),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            Reason::ProtocolAssignment,
        ),
        ("2001:10::1", Reason::ProtocolAssignment),
        ("2001:5::1", Reason::ProtocolAssignment),
        ("2001:4:113::1", Reason::ProtocolAssignment),
        ("2001:1ff::1", Reason::ProtocolAssignment),
        ("2001:2::1", Reason::Benchmarking),
        ("2001:2:0:ffff::1", Reason::Benchmarking),
        ("2001:db8::1", Reason::Documentation),
        ("2001:db8:ffff::1", Reason::Documentation),
        ("3fff::1", Reason::Documentation),
        ("3fff:fff::1", Reason::Documentation),
        ("5f00::1", Reason::Srv6),
        ("5f00:ffff::1", Reason::Srv6),
        // 6to4 is judged by the IPv4 address in bits 16..48.
        ("2002:7f00:0001::", Reason::Loopback),
        ("2002:0a00:0001::1", Reason::Private),
        ("2002:a9fe:a9fe::1", Reason::LinkLocal),
        ("2002:c000:0201::1", Reason::Documentation),
        ("2002::1", Reason::Unspecified),
        // The IPv4 ranges carried in IPv6 are judged by the IPv4 address too.
        ("::ffff:192.0.2.1", Reason::Documentation),
        ("64:ff9b::c612:1", Reason::Benchmarking),
    ];
    for (addr, reason) in cases {
        assert_eq!(policy.is_refused(ip(addr)), Some(reason), "{addr}");
    }
}

#[test]
fn public_addresses_next_to_registry_ranges_pass() {
    let policy = SsrfPolicy::strict();
    for addr in [
        // IPv4 neighbours, and the globally reachable anycast addresses in 192.0.0.0/24.
        "192.0.0.9",
        "192.0.0.10",
        "192.0.1.1",
        "192.0.3.1",
        "198.17.255.255",
        "198.20.0.1",
        "198.51.99.1",
        "198.51.101.1",
        "203.0.112.1",
        "203.0.114.1",
        "192.88.98.1",
        "192.88.100.1",
        // IPv6 neighbours.
        "64:ff9b:2::1",
        "2001:200::1",
        "2001:4860::8888",
        "2001:db7::1",
        "2001:db9::1",
        "3ffe::1",
        "3fff:1000::1",
        "5f01::1",
        "5eff::1",
        "100:0:0:2::1",
        // The globally reachable blocks in 2001::/23.
        "2001:1::1",
        "2001:1::2",
        "2001:1::3",
        "2001:3::1",
        "2001:4:112::1",
        "2001:20::1",
        "2001:2f::1",
        "2001:30::1",
        "2001:3f::1",
        // 6to4 of a public IPv4 address.
        "2002:0808:0808::1",
        "2002:5db8:d822::",
    ] {
        assert_eq!(policy.is_refused(ip(addr)), None, "{addr}");
    }
}

#[test]
fn allow_cidrs_allow_registry_ranges() {
    let nets = [
        "192.0.2.0/24",
        "198.18.0.0/15",
        "192.0.0.0/24",
        "192.88.99.0/24",
        "2001:db8::/32",
        "3fff::/20",
        "2001::/23",
        "64:ff9b:1::/48",
        "100::/64",
        "5f00::/16",
        "10.1.0.0/16",
    ]
    .iter()
    .map(|entry| parse_cidr(entry).expect("cidr"))
    .collect();
    let policy = SsrfPolicy::new(false, nets);
    for addr in [
        "192.0.2.1",
        "198.19.0.1",
        "192.0.0.1",
        "192.88.99.1",
        "2001:db8::1",
        "3fff::1",
        "2001::1",
        "2001:2::1",
        "64:ff9b:1::1",
        "100::1",
        "5f00::1",
        // 6to4 and mapped forms of an allowed IPv4 range.
        "2002:0a01:0203::1",
        "2002:c000:0201::1",
        "::ffff:198.18.0.1",
    ] {
        assert_eq!(policy.is_refused(ip(addr)), None, "{addr}");
    }
    assert_eq!(
        policy.is_refused(ip("198.51.100.1")),
        Some(Reason::Documentation)
    );
    assert_eq!(policy.is_refused(ip("2002:0a02::1")), Some(Reason::Private));

    // A 6to4 prefix can be allowed as such.
    let sixtofour = SsrfPolicy::new(false, vec![parse_cidr("2002:7f00:1::/48").expect("cidr")]);
    assert_eq!(sixtofour.is_refused(ip("2002:7f00:1::5")), None);
    assert_eq!(
        sixtofour.is_refused(ip("127.0.0.1")),
        Some(Reason::Loopback)
    );
}

#[test]
fn registry_reasons_name_their_range() {
    for (url, text) in [
        ("http://192.0.2.1/", "a documentation (TEST-NET"),
        ("http://[2001:db8::1]/", "2001:db8::/32"),
        ("http://198.18.0.1/", "a benchmarking (198.18.0.0/15"),
        (
            "http://192.0.0.1/",
            "an IETF protocol assignment (192.0.0.0/24",
        ),
        ("http://[2001::1]/", "2001::/23"),
        ("http://192.88.99.1/", "6to4 relay anycast (192.88.99.0/24)"),
        ("http://[64:ff9b:1::1]/", "(64:ff9b:1::/48)"),
        (
            "http://[100::1]/",
            "a discard-only or dummy (100::/63) address",
        ),
        (
            "http://[5f00::1]/",
            "an SRv6 segment identifier (5f00::/16) address",
        ),
        ("http://[2002:7f00:1::]/", "a loopback address"),
    ] {
        let message = refused_now(url).to_string();
        assert!(message.contains(text), "{url}: {message}");
    }
}

#[test]
fn allow_cidrs_and_allow_private() {
    let nets = vec![
        parse_cidr("127.0.0.1/32").expect("cidr"),
        parse_cidr("10.1.0.0/16").expect("cidr"),
        parse_cidr("fd00::1").expect("bare address"),
    ];
    let policy = SsrfPolicy::new(false, nets);
    assert_eq!(policy.is_refused(ip("127.0.0.1")), None);
    assert_eq!(policy.is_refused(ip("::ffff:127.0.0.1")), None);
    assert_eq!(policy.is_refused(ip("127.0.0.2")), Some(Reason::Loopback));
    assert_eq!(policy.is_refused(ip("10.1.200.3")), None);
    assert_eq!(policy.is_refused(ip("10.2.0.1")), Some(Reason::Private));
    assert_eq!(policy.is_refused(ip("fd00::1")), None);
    assert_eq!(policy.is_refused(ip("fd00::2")), Some(Reason::UniqueLocal));
    assert_eq!(policy.is_refused(ip("::1")), Some(Reason::Loopback));

    let open = SsrfPolicy::allow_all();
    for addr in ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.1"] {
        assert_eq!(open.is_refused(ip(addr)), None, "{addr}");
    }
}

#[test]
fn parse_cidr_errors_quote_the_entry() {
    for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::1/129", ""] {
        let err = parse_cidr(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
    assert_eq!(
        parse_cidr(" 10.9.8.7/8 ").expect("host bits are truncated"),
        parse_cidr("10.0.0.0/8").expect("cidr")
    );
}

fn refused_now(url: &str) -> Refusal {
    check_url_now(url, &SsrfPolicy::strict()).expect_err(url)
}

#[test]
fn check_url_now_refuses_special_literals() {
    let cases = [
        ("http://127.0.0.1/", "127.0.0.1", Reason::Loopback),
        ("http://127.0.0.1:8080/hook", "127.0.0.1", Reason::Loopback),
        ("http://10.0.0.5/", "10.0.0.5", Reason::Private),
        ("http://172.16.3.4/", "172.16.3.4", Reason::Private),
        ("https://192.168.0.10/x", "192.168.0.10", Reason::Private),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
            Reason::LinkLocal,
        ),
        ("http://[::1]/", "::1", Reason::Loopback),
        ("http://[fe80::1]/", "fe80::1", Reason::LinkLocal),
        ("http://[fc00::1]/", "fc00::1", Reason::UniqueLocal),
        (
            "http://[::ffff:127.0.0.1]/",
            "::ffff:127.0.0.1",
            Reason::Loopback,
        ),
        (
            "http://[::ffff:a9fe:a9fe]/",
            "::ffff:169.254.169.254",
            Reason::LinkLocal,
        ),
        // Decimal, octal and hex IPv4 forms are normalized by the URL parser.
        ("http://2130706433/", "127.0.0.1", Reason::Loopback),
        ("http://0177.0.0.1/", "127.0.0.1", Reason::Loopback),
        ("http://0x7f.1/", "127.0.0.1", Reason::Loopback),
        ("http://0.0.0.0/", "0.0.0.0", Reason::Unspecified),
        ("http://0/", "0.0.0.0", Reason::Unspecified),
        ("http://[::]/", "::", Reason::Unspecified),
        ("http://100.64.1.1/", "100.64.1.1", Reason::SharedCgnat),
    ];
    for (url, addr, reason) in cases {
        match refused_now(url) {
            Refusal::Address {
                ip: got,
                reason: why,
                ..
            } => {
                assert_eq!((got, why), (ip(addr), reason), "{url}");
            }
            other => panic!("{url}: unexpected {other:?}"),
        }
    }
}

#[test]
fn refusal_message_says_why_and_how() {
    assert_eq!(
        refused_now("http://127.0.0.1/").to_string(),
        "webhook url http://127.0.0.1/ points to a loopback address; \
         set webhook.allow_private or webhook.allow_cidrs to allow it"
    );
    assert!(refused_now("http://169.254.169.254/")
        .to_string()
        .contains("a link-local address"));
}

#[test]
fn check_url_now_refuses_localhost_names_and_other_schemes() {
    for url in [
        "http://localhost/",
        "http://LOCALHOST:8080/x",
        "http://api.localhost/",
        "http://localhost./",
    ] {
        assert!(
            matches!(refused_now(url), Refusal::LocalName { .. }),
            "{url}"
        );
    }
    for (url, scheme) in [
        ("ftp://example.com/file", "ftp"),
        ("file:///etc/passwd", "file"),
        ("gopher://example.com/", "gopher"),
    ] {
        match refused_now(url) {
            Refusal::Scheme { scheme: got, .. } => assert_eq!(got, scheme),
            other => panic!("{url}: unexpected {other:?}"),
        }
    }
    assert!(refused_now("ftp://example.com/")
        .to_string()
        .contains("only http and https"));
    assert!(matches!(
        refused_now("not a url"),
        Refusal::InvalidUrl { .. }
    ));
}

#[test]
fn check_url_now_passes_public_and_allowed() {
    let strict = SsrfPolicy::strict();
    for url in [
        "https://example.com/hook",
        "http://93.184.216.34:8080/",
        "https://[2606:4700::1111]/",
        "https://hooks.example.com/${thing.thingName}?t=${timestamp}",
    ] {
        assert_eq!(check_url_now(url, &strict), Ok(()), "{url}");
    }
    let loopback = SsrfPolicy::new(false, vec![parse_cidr("127.0.0.1/32").expect("cidr")]);
    assert_eq!(check_url_now("http://127.0.0.1:9/", &loopback), Ok(()));
    assert_eq!(check_url_now("http://localhost:9/", &loopback), Ok(()));
    assert_eq!(
        check_url_now("http://[::1]/", &SsrfPolicy::allow_all()),
        Ok(())
    );
}

#[test]
fn templated_urls_are_checked_as_far_as_they_are_fixed() {
    let strict = SsrfPolicy::strict();
    // Host from a variable: checked at send time.
    assert_eq!(check_url_now("http://${thing.host}/x", &strict), Ok(()));
    assert_eq!(check_url_now("https://user:${p}@${h}:80/", &strict), Ok(()));
    assert_eq!(check_url_now("${rule.url}", &strict), Ok(()));
    // Fixed parts are still judged.
    assert!(matches!(
        check_url_now("http://127.0.0.1/${thing.thingName}", &strict),
        Err(Refusal::Address { .. })
    ));
    assert!(matches!(
        check_url_now("ftp://${thing.host}/", &strict),
        Err(Refusal::Scheme { .. })
    ));
    assert!(matches!(
        check_url_now("http://user:${secret}@10.0.0.1/", &strict),
        Err(Refusal::Address { .. })
    ));
}

#[test]
fn send_time_check_leaves_names_to_the_resolver() {
    let strict = SsrfPolicy::strict();
    let url = Url::parse("http://localhost:9/").expect("url");
    assert_eq!(check_before_send(&url, &strict), Ok(()));
    let url = Url::parse("http://[::ffff:7f00:1]/").expect("url");
    assert!(matches!(
        check_before_send(&url, &strict),
        Err(Refusal::Address { .. })
    ));
}
