//! `--ccstream-metrics`: one counter of ccstream's Prometheus `/metrics`, read over a minimal
//! HTTP/1.1 GET and polled during a run ([`CounterWatch`]).
//!
//! Why a hand-written GET: the endpoint is plain HTTP on loopback, one request per poll with
//! `Connection: close`, so there is no pool, TLS or redirect to handle; a client crate would be a
//! new dependency of the generator for two hundred lines. Response parsing
//! ([`parse_response`], [`decode_chunked`]) and the text-format sum ([`counter_sum`]) are pure.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The counter ccstream increments for each observation it spooled (and so acknowledged).
pub const STORED_COUNTER: &str = "ccstream_objects_records_total";

/// Bigger answers are refused: ccstream's whole `/metrics` is tens of KiB.
const MAX_RESPONSE: usize = 16 << 20;
/// Per request: connect, send, read the whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

impl HttpUrl {
    pub fn parse(url: &str) -> anyhow::Result<HttpUrl> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        // `[::1]:8080` keeps its brackets out of the host; a bare `host:port` splits at the colon.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .with_context(|| format!("{url:?}: unclosed [ in the host"))?;
                (h, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        anyhow::ensure!(!host.is_empty(), "{url:?}: no host");
        let port = match port {
            Some(p) => p
                .parse()
                .with_context(|| format!("{url:?}: bad port {p:?}"))?,
            None => 80,
        };
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses what was read so far of a response. `Ok(None)`: incomplete, read more. `eof`: the
/// server closed the connection, so an incomplete response is an error, and a body without
/// length or chunking ends here.
pub fn parse_response(raw: &[u8], eof: bool) -> anyhow::Result<Option<Response>> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        anyhow::ensure!(!eof, "connection closed inside the response head");
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    anyhow::ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 status line: {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length) = (false, None::<usize>);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            anyhow::bail!("bad header line {line:?}");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is always the last coding when present (RFC 9112, 6.1).
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    // No body, whatever the headers say (RFC 9112, 6.3).
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some(Response {
            status,
            body: Vec::new(),
        }));
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(n) = length {
        (body.len() >= n).then(|| body[..n].to_vec())
    } else if eof {
        Some(body.to_vec())
    } else {
        None
    };
    match body {
        Some(body) => Ok(Some(Response { status, body })),
        None if eof => anyhow::bail!("connection closed inside the body"),
        None => Ok(None),
    }
}

/// Decodes a chunked body. `Ok(None)`: the last chunk (or the trailer after it) has not arrived.
pub fn decode_chunked(mut raw: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(raw, b"\r\n") else {
            // A size line is a few hex digits; a long run without CRLF is not one.
            anyhow::ensure!(raw.len() <= 1024, "chunk size line too long");
            return Ok(None);
        };
        let line = std::str::from_utf8(&raw[..line_end]).context("chunk size line not UTF-8")?;
        // Chunk extensions (`;name=value`) are allowed and ignored.
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            // The trailer section: header lines, then an empty line.
            if raw.starts_with(b"\r\n") || find(raw, b"\r\n\r\n").is_some() {
                return Ok(Some(out));
            }
            return Ok(None);
        }
        anyhow::ensure!(
            out.len().saturating_add(size) <= MAX_RESPONSE,
            "chunked body over {MAX_RESPONSE} bytes"
        );
        let Some(with_crlf) = size.checked_add(2) else {
            anyhow::bail!("chunk size {size} overflows");
        };
        if raw.len() < with_crlf {
            return Ok(None);
        }
        anyhow::ensure!(
            &raw[size..with_crlf] == b"\r\n",
            "chunk of {size} bytes not followed by CRLF"
        );
        out.extend_from_slice(&raw[..size]);
        raw = &raw[with_crlf..];
    }
}

/// GETs `url` and returns the body of a 2xx answer.
pub async fn get(url: &HttpUrl) -> anyhow::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .context("connect")?;
        let host = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
            url.path
        );
        stream
            .write_all(request.as_bytes())
            .await
            .context("send the request")?;
        let mut raw = Vec::with_capacity(64 << 10);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = stream.read(&mut buf).await.context("read the response")?;
            raw.extend_from_slice(&buf[..n]);
            anyhow::ensure!(
                raw.len() <= MAX_RESPONSE,
                "response over {MAX_RESPONSE} bytes"
            );
            // Stop at the end of the framed body too: a server may keep the connection open.
            if let Some(r) = parse_response(&raw, n == 0)? {
                return Ok(r);
            }
        }
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no complete answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(
        (200..300).contains(&response.status),
        "GET {url} answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
    );
    Ok(response.body)
}

/// The sum over all label sets of counter `name` in Prometheus text exposition format. Samples of
/// other metrics, including ones that only start with `name`, do not count; a counter that is not
/// there yet (nothing counted) sums to 0.
pub fn counter_sum(text: &str, name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(after) = line.strip_prefix(name) else {
            continue;
        };
        // The name goes on (`name_x`): another metric that only starts like this one.
        if !(after.is_empty() || after.starts_with(['{', ' ', '\t'])) {
            continue;
        }
        let after = after.trim_start();
        let rest = match after.strip_prefix('{') {
            Some(labels) => {
                let end = labels_end(labels)
                    .with_context(|| format!("line {}: unclosed labels: {line:?}", i + 1))?;
                &labels[end..]
            }
            None => after,
        };
        let value = rest
            .split_whitespace()
            .next()
            .with_context(|| format!("line {}: no value: {line:?}", i + 1))?;
        let v: f64 = value
            .parse()
            .with_context(|| format!("line {}: bad value {value:?}", i + 1))?;
        anyhow::ensure!(v.is_finite(), "line {}: counter value {value}", i + 1);
        sum += v;
    }
    Ok(sum)
}

/// Where the label set that `s` starts inside ends: just past its `}`. Label values are quoted
/// and may hold `}`, `"` and `\` escaped with `\`.
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Reads the current value of counter `name` at `url`.
pub async fn read_counter(url: &HttpUrl, name: &str) -> anyhow::Result<f64> {
    let body = get(url).await?;
    counter_sum(&String::from_utf8_lossy(&body), name)
        .with_context(|| format!("{name} in the answer of {url}"))
}

#[derive(Debug)]
struct Progress {
    /// Each change of the counter's growth since the start, with when it was seen. Bounded by
    /// the run's length over the poll interval.
    changes: Vec<(Instant, u64)>,
    last_change: Instant,
    last_error: Option<String>,
}

/// Counter `name` at `url`: its value at the start, then polled. Counts only growth after the
/// start, so earlier runs against the same ccstream do not count.
#[derive(Debug)]
pub struct CounterWatch {
    url: HttpUrl,
    name: String,
    base: f64,
    /// std `Mutex`: held for a push or a read, never across an `.await`.
    progress: Mutex<Progress>,
}

impl CounterWatch {
    /// Reads the start value; fails when the endpoint does not answer.
    pub async fn start(url: &str, name: &str) -> anyhow::Result<Arc<CounterWatch>> {
        let url = HttpUrl::parse(url).context("--ccstream-metrics")?;
        let base = read_counter(&url, name)
            .await
            .with_context(|| format!("--ccstream-metrics: the start value of {name}"))?;
        Ok(Arc::new(CounterWatch {
            url,
            name: name.to_owned(),
            base,
            progress: Mutex::new(Progress {
                changes: Vec::new(),
                last_change: Instant::now(),
                last_error: None,
            }),
        }))
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the counter once. A failed read is kept as the last error, not returned: a slow
    /// scrape in the middle of a run should not end the run.
    pub async fn poll(&self) {
        let value = read_counter(&self.url, &self.name).await;
        let now = Instant::now();
        let mut p = self.progress();
        match value {
            Ok(v) => {
                // A restarted ccstream starts from 0 again: no growth rather than a wrap.
                let delta = (v - self.base).max(0.0) as u64;
                if p.changes.last().map_or(delta > 0, |&(_, d)| d != delta) {
                    p.changes.push((now, delta));
                    p.last_change = now;
                }
            }
            Err(e) => p.last_error = Some(format!("{e:#}")),
        }
    }

    /// Polls every `every` until the returned task is aborted.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.poll().await;
            }
        })
    }

    /// Growth since the start as last seen, and when it last changed (the start if never).
    pub fn growth(&self) -> (u64, Instant) {
        let p = self.progress();
        (p.changes.last().map_or(0, |&(_, d)| d), p.last_change)
    }

    /// When the growth was first seen at or over `target`.
    pub fn reached(&self, target: u64) -> Option<Instant> {
        first_reaching(&self.progress().changes, target)
    }

    pub fn last_error(&self) -> Option<String> {
        self.progress().last_error.clone()
    }
}

/// The first time in `changes` (in time order) whose value is at least `target`.
pub fn first_reaching(changes: &[(Instant, u64)], target: u64) -> Option<Instant> {
    changes.iter().find(|&&(_, d)| d >= target).map(|&(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP ccstream_objects_records_total Records spooled.
# TYPE ccstream_objects_records_total counter
ccstream_objects_records_total{kind=\"observations\"} 3e5
ccstream_objects_records_total{kind=\"errors\",note=\"a } \\\" b\"} 12
ccstream_objects_records_total_x{kind=\"observations\"} 1000
ccstream_objects_records_totalx 7
ccstream_objects_records 5
#ccstream_objects_records_total 99
  # TYPE other counter
other_total{of=\"ccstream_objects_records_total\"} 4
";

    #[test]
    fn sums_a_counter_over_labels_only() {
        let s = counter_sum(METRICS, STORED_COUNTER).expect("sum");
        assert_eq!(s, 300_012.0);
    }

    #[test]
    fn counter_without_labels_with_timestamp_or_absent() {
        assert_eq!(
            counter_sum(
                "c_total 42 1712345678000\nc_total{a=\"1\"} 1.5\n",
                "c_total"
            )
            .expect("ok"),
            43.5
        );
        assert_eq!(counter_sum("other 1\n", "c_total").expect("ok"), 0.0);
        assert_eq!(counter_sum("", "c_total").expect("ok"), 0.0);
    }

    #[test]
    fn bad_counter_values_are_errors() {
        assert!(counter_sum("c_total abc\n", "c_total").is_err());
        assert!(counter_sum("c_total{a=\"1\" 5\n", "c_total").is_err());
        assert!(counter_sum("c_total\n", "c_total").is_err());
        assert!(counter_sum("c_total +Inf\n", "c_total").is_err());
    }

    #[test]
    fn content_length_responses() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(raw, false).expect("ok"),
            Some(Response {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        assert_eq!(
            parse_response(&raw[..raw.len() - 2], false).expect("ok"),
            None
        );
        assert!(parse_response(&raw[..raw.len() - 2], true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nConte", true).is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
    }

    #[test]
    fn close_delimited_and_bodiless_responses() {
        let raw = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope";
        assert_eq!(parse_response(raw, false).expect("ok"), None);
        let r = parse_response(raw, true).expect("ok").expect("complete");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .expect("ok")
            .expect("complete");
        assert_eq!(r.status, 204);
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(
            decode_chunked(body).expect("ok").as_deref(),
            Some(&b"hello, world"[..])
        );
        // Every strict prefix is incomplete, never an error or a short body.
        for n in 0..body.len() {
            assert_eq!(decode_chunked(&body[..n]).expect("prefix"), None, "{n}");
        }
        // Hex sizes and a trailer.
        let body = b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            decode_chunked(body).expect("ok").as_deref(),
            Some(&b"0123456789"[..])
        );
        assert!(decode_chunked(b"zz\r\nhello\r\n").is_err());
        assert!(decode_chunked(b"2\r\nhello\r\n").is_err());
        assert!(decode_chunked(b"ffffffffffffffffff\r\n").is_err());
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let r = parse_response(raw, false).expect("ok").expect("complete");
        assert_eq!(r.body, b"abc");
        assert!(parse_response(&raw[..raw.len() - 4], true).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:8080/metrics").expect("ok"),
            HttpUrl {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/metrics".into()
            }
        );
        let u = HttpUrl::parse("http://[::1]:9/m?x=1").expect("ok");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9, "/m?x=1")
        );
        assert_eq!(HttpUrl::parse("http://h").expect("ok").path, "/");
        assert!(HttpUrl::parse("https://h/metrics").is_err());
        assert!(HttpUrl::parse("http://h:x/").is_err());
        assert!(HttpUrl::parse("http:///metrics").is_err());
    }

    #[test]
    fn first_time_a_target_was_reached() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let changes = [(at(50), 10), (at(100), 90), (at(150), 100), (at(200), 120)];
        assert_eq!(first_reaching(&changes, 100), Some(at(150)));
        assert_eq!(first_reaching(&changes, 1), Some(at(50)));
        assert_eq!(first_reaching(&changes, 121), None);
    }

    /// Against an axum server like ccstream's: the GET, the framing axum chose, the sum.
    #[tokio::test]
    async fn reads_a_counter_from_an_axum_server() {
        use axum::routing::get as route;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/metrics", route(|| async { METRICS }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/metrics");
        let watch = CounterWatch::start(&url, STORED_COUNTER)
            .await
            .expect("start");
        watch.poll().await;
        assert_eq!(watch.growth().0, 0);
        assert_eq!(watch.last_error(), None);
        let missing = HttpUrl::parse(&format!("http://{addr}/nope")).expect("url");
        let err = get(&missing).await.expect_err("404");
        assert!(format!("{err:#}").contains("404"), "{err:#}");
    }
}
