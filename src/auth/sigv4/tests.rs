//! Vectors from AWS's published SigV4 test suite (`get-vanilla`, `post-x-www-form-urlencoded`:
//! key AKIDEXAMPLE, region us-east-1, service `service`, 2015-08-30T12:36:00Z), and what must be
//! refused.

use super::*;
use axum::http::HeaderMap;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const DATE: &str = "20150830T123600Z";

fn at(secs_after: i64) -> SystemTime {
    let signed = parse_amz_date(DATE).expect("vector date");
    if secs_after >= 0 {
        signed + Duration::from_secs(secs_after.unsigned_abs())
    } else {
        signed - Duration::from_secs(secs_after.unsigned_abs())
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            axum::http::HeaderName::try_from(*name).expect("name"),
            value.parse().expect("value"),
        );
    }
    map
}

const GET_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

fn get_vanilla() -> HeaderMap {
    headers(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)])
}

const POST_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b";
const POST_BODY: &[u8] = b"Param1=value1";

fn post_form() -> HeaderMap {
    headers(&[
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Host", "example.amazonaws.com"),
        ("Content-Length", "13"),
        ("X-Amz-Date", DATE),
        (
            "x-amz-content-sha256",
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
        ),
    ])
}

fn check(
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
    auth: &str,
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let auth = Authorization::parse(auth)?;
    let request = Request {
        method,
        path_and_query: "/",
        headers,
        body,
    };
    verify(&request, &auth, SECRET, None, now)
}

#[test]
fn the_published_vectors_verify() {
    assert_eq!(check("GET", &get_vanilla(), b"", GET_AUTH, at(0)), Ok(()));
    assert_eq!(
        check("POST", &post_form(), POST_BODY, POST_AUTH, at(60)),
        Ok(())
    );
    let auth = Authorization::parse(POST_AUTH).expect("parses");
    assert_eq!(
        (
            auth.access_key_id.as_str(),
            auth.date.as_str(),
            auth.region.as_str(),
            auth.service.as_str()
        ),
        ("AKIDEXAMPLE", "20150830", "us-east-1", "service")
    );
}

#[test]
fn what_was_not_signed_as_sent_is_refused() {
    // The body changed after signing (its hash header kept).
    assert_eq!(
        check("POST", &post_form(), b"Param1=value2", POST_AUTH, at(0)),
        Err(SigV4Error::BodyHash)
    );
    // The body changed, and its hash header with it: the signature no longer matches.
    let mut changed = post_form();
    changed.insert(
        "x-amz-content-sha256",
        hex::encode(Sha256::digest(b"Param1=value2"))
            .parse()
            .expect("hex is a header value"),
    );
    assert_eq!(
        check("POST", &changed, b"Param1=value2", POST_AUTH, at(0)),
        Err(SigV4Error::Mismatch)
    );
    // Another method, another secret, a header in SignedHeaders that is not there.
    assert_eq!(
        check("PUT", &get_vanilla(), b"", GET_AUTH, at(0)),
        Err(SigV4Error::Mismatch)
    );
    let auth = Authorization::parse(GET_AUTH).expect("parses");
    let request = Request {
        method: "GET",
        path_and_query: "/",
        headers: &get_vanilla(),
        body: b"",
    };
    assert_eq!(
        verify(&request, &auth, "not the secret", None, at(0)),
        Err(SigV4Error::Mismatch)
    );
    let missing = GET_AUTH.replace("host;x-amz-date", "host;x-amz-date;x-custom");
    assert_eq!(
        check("GET", &get_vanilla(), b"", &missing, at(0)),
        Err(SigV4Error::MissingSignedHeader("x-custom".to_owned()))
    );
    let no_host = GET_AUTH.replace("host;x-amz-date", "x-amz-date");
    assert_eq!(
        check("GET", &get_vanilla(), b"", &no_host, at(0)),
        Err(SigV4Error::HostNotSigned)
    );
}

#[test]
fn the_date_must_be_recent_and_match_the_scope() {
    assert_eq!(check("GET", &get_vanilla(), b"", GET_AUTH, at(299)), Ok(()));
    assert_eq!(
        check("GET", &get_vanilla(), b"", GET_AUTH, at(-299)),
        Ok(())
    );
    assert_eq!(
        check("GET", &get_vanilla(), b"", GET_AUTH, at(6 * 60)),
        Err(SigV4Error::Stale)
    );
    assert_eq!(
        check("GET", &get_vanilla(), b"", GET_AUTH, at(-6 * 60)),
        Err(SigV4Error::Stale)
    );
    let other_day = GET_AUTH.replace("/20150830/", "/20150831/");
    assert_eq!(
        check("GET", &get_vanilla(), b"", &other_day, at(0)),
        Err(SigV4Error::ScopeDate)
    );
    let undated = headers(&[("Host", "example.amazonaws.com")]);
    assert_eq!(
        check("GET", &undated, b"", GET_AUTH, at(0)),
        Err(SigV4Error::BadDate)
    );
    for bad in [
        "2015083T123600Z",
        "20151330T123600Z",
        "20150830T126000Z",
        "+0150830T123600Z",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad}");
    }
}

#[test]
fn garbage_authorization_headers_are_malformed() {
    for bad in [
        "",
        "Bearer abc",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256Credential=x",
        "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=AK/2015083/us-east-1/service/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws5_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=zz",
        "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=5fa0, Extra=1",
    ] {
        assert_eq!(Authorization::parse(bad), Err(SigV4Error::Malformed), "{bad}");
    }
}
