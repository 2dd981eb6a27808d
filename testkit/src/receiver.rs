//! A webhook receiver for tests: an axum server on a port of its own on 127.0.0.1 that records
//! every request (method, path, query, headers, body, arrival time, the status it answered) and
//! answers as scripted: one-shot replies per path (status, headers, a delay), a fallback for
//! everything else (200 unless set), and "fail the next n requests".
//!
//! Two ways to host it:
//!
//! - [`Receiver::start`]: on a thread with its own tokio runtime, so a test that blocks its own
//!   thread (to run `mosquitto_pub`, say) or drives another process never delays an answer;
//! - [`Receiver::start_here`]: a task on the caller's runtime, so a test under a paused tokio
//!   clock (`#[tokio::test(start_paused = true)]`) has the reply delays in virtual time too.
//!
//! Waiting for requests ([`Receiver::wait_for`], [`Receiver::wait_until`]) is woken by each
//! arrival and bounded by a real-time deadline kept by a thread, never by a tokio timer: under a
//! paused clock a tokio timeout would be auto-advanced to as soon as the runtime is idle, and a
//! wait would end early for no reason.
//!
//! When a test panics, dropping the receiver prints every request it got.

use std::net::SocketAddr;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

/// What the receiver answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Response headers, in order (a name may repeat).
    pub headers: Vec<(String, String)>,
    /// How long the receiver waits before answering (on its runtime's clock: virtual time under
    /// a paused clock with [`Receiver::start_here`]). The request is recorded on arrival.
    pub delay: Duration,
}

impl Reply {
    /// This status, at once, no extra headers. The body is the status's reason phrase.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Answers only after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The path as sent, percent-encoding untouched, without the query (`/hook/a%3Fx%3D1/end`).
    pub path: String,
    /// The query without its `?`, when the request had one.
    pub query: Option<String>,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Arrival, in real time.
    pub at: Instant,
    /// Arrival on the clock of the runtime hosting the receiver: virtual time under a paused
    /// clock ([`Receiver::start_here`]), the same as `at` otherwise.
    pub clock_at: tokio::time::Instant,
    /// The status this receiver answered (or was about to, when the client gave up during a
    /// [`Reply::after`] delay).
    pub answered: u16,
}

impl Received {
    /// The path and, when there was one, `?` and the query: what the request line carried.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics, showing the body, when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

struct Script {
    received: Vec<Received>,
    /// One-shot replies by exact path (no query), first match wins.
    once: Vec<(String, Reply)>,
    /// The reply to everything else.
    fallback: Reply,
    /// Requests still to be answered with `failure_status` at once, whatever their path.
    failures_left: usize,
    failure_status: u16,
}

struct Shared {
    script: Mutex<Script>,
    /// How many requests were recorded; waiters are woken by its changes.
    count: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Host {
    Thread {
        stop: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Task(tokio::task::JoinHandle<()>),
}

/// The running receiver; dropping it stops the server.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    host: Host,
}

impl Receiver {
    /// Starts on a thread with its own current-thread runtime: for tests that block their
    /// thread or drive another process.
    pub fn start() -> Receiver {
        let (std_listener, addr, shared) = Self::bind();
        let (stop, stopped) = oneshot::channel::<()>();
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("webhook-receiver-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    // Not a graceful shutdown: that would wait for the client's pooled
                    // keep-alive connections. Dropping the runtime closes them.
                    tokio::select! {
                        () = serve(std_listener, state) => {}
                        _ = stopped => {}
                    }
                });
            })
            .unwrap();
        Receiver {
            addr,
            shared,
            host: Host::Thread {
                stop: Some(stop),
                thread: Some(thread),
            },
        }
    }

    /// Starts as a task on the caller's runtime: for tests under a paused clock, whose reply
    /// delays then pass in virtual time. A test that blocks its thread delays the answers.
    pub async fn start_here() -> Receiver {
        let (std_listener, addr, shared) = Self::bind();
        let task = tokio::spawn(serve(std_listener, Arc::clone(&shared)));
        Receiver {
            addr,
            shared,
            host: Host::Task(task),
        }
    }

    fn bind() -> (std::net::TcpListener, SocketAddr, Arc<Shared>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                received: Vec::new(),
                once: Vec::new(),
                fallback: Reply::status(200),
                failures_left: 0,
                failure_status: 500,
            }),
            count: watch::Sender::new(0),
        });
        (listener, addr, shared)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request to exactly `path` (no query) is answered with `reply`; several calls for
    /// one path queue up in call order.
    pub fn reply_once(&self, path: &str, reply: Reply) -> &Self {
        self.shared.lock().once.push((path.to_owned(), reply));
        self
    }

    /// The reply to every request no other rule answers (initially 200 at once).
    pub fn fallback(&self, reply: Reply) -> &Self {
        self.shared.lock().fallback = reply;
        self
    }

    /// The next `n` requests, whatever their path, are answered with `status` at once. This
    /// comes before [`Receiver::reply_once`] replies, which it leaves in place.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut script = self.shared.lock();
        script.failures_left = n;
        script.failure_status = status;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.shared.lock().received.len()
    }

    /// Waits until at least `n` requests arrived and returns all of them; `None` when `timeout`
    /// (real time) passed first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Option<Vec<Received>> {
        self.wait_until(timeout, |got| got.len() >= n).await
    }

    /// Waits until `done` holds for the requests so far (checked at once and after each
    /// arrival) and returns them; `None` when `timeout` (real time) passed first.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Option<Vec<Received>> {
        // Subscribed before the first look: an arrival after it is a change to wake on.
        let mut count = self.shared.count.subscribe();
        let mut expired = RealDeadline::after(timeout);
        loop {
            let got = self.requests();
            if done(&got) {
                return Some(got);
            }
            tokio::select! {
                // The sender lives in `self.shared`: `changed` cannot fail while we wait.
                _ = count.changed() => {}
                () = expired.reached() => {
                    let got = self.requests();
                    return done(&got).then_some(got);
                }
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        match &mut self.host {
            Host::Thread { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Host::Task(task) => task.abort(),
        }
        if std::thread::panicking() {
            eprintln!("--- webhook receiver {} got ---", self.addr);
            for r in self.requests() {
                eprintln!(
                    "{} {} -> {} {:?} {}",
                    r.method,
                    r.path_and_query(),
                    r.answered,
                    r.headers,
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
    }
}

/// A deadline in real time, kept by a thread: unlike a tokio timer it is not moved forward when
/// a paused runtime auto-advances its clock. The thread ends when the deadline is dropped.
struct RealDeadline {
    fired: oneshot::Receiver<()>,
    done: bool,
    _cancel: std::sync::mpsc::Sender<()>,
}

impl RealDeadline {
    fn after(timeout: Duration) -> Self {
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let (fire, fired) = oneshot::channel();
        std::thread::Builder::new()
            .name("receiver-deadline".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(timeout) {
                    let _ = fire.send(());
                }
            })
            .unwrap();
        Self {
            fired,
            done: false,
            _cancel: cancel,
        }
    }

    /// Resolves once the deadline has passed (and at once on every later call).
    async fn reached(&mut self) {
        if !self.done {
            // An error means the thread is gone without firing, which it only does when
            // cancelled; treat it as reached all the same rather than wait forever.
            let _ = (&mut self.fired).await;
            self.done = true;
        }
    }
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .unwrap()
        // The whole answer leaves at once rather than waiting on a delayed ACK.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let app = Router::new().fallback(record).with_state(shared);
    axum::serve(listener, app).await.unwrap();
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let clock_at = tokio::time::Instant::now();
    let path = uri.path().to_owned();
    let (reply, count) = {
        let mut script = shared.lock();
        let reply = if script.failures_left > 0 {
            script.failures_left -= 1;
            Reply::status(script.failure_status)
        } else if let Some(i) = script.once.iter().position(|(p, _)| *p == path) {
            script.once.remove(i).1
        } else {
            script.fallback.clone()
        };
        script.received.push(Received {
            method: method.to_string(),
            path,
            query: uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            at,
            clock_at,
            answered: reply.status,
        });
        (reply, script.received.len())
    };
    shared.count.send_replace(count);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut out = HeaderMap::new();
    for (name, value) in &reply.headers {
        out.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (status, out, status.canonical_reason().unwrap_or_default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(url: &str) -> u16 {
        reqwest::Client::new()
            .post(url)
            .body("hi")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn records_and_answers_as_scripted() {
        let hooks = Receiver::start_here().await;
        hooks
            .reply_once("/a", Reply::status(429).header("Retry-After", "1"))
            .fallback(Reply::status(204));
        let response = reqwest::Client::new()
            .put(hooks.url("/a%3Fx/b?k=v&w"))
            .header("X-Token", "t")
            .body("{\"v\": 1}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "the query is not part of the path");
        let response = reqwest::get(hooks.url("/a?z")).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.text().await.unwrap(), "Too Many Requests");
        assert_eq!(send(&hooks.url("/a")).await, 204, "one-shot");

        let got = hooks.requests();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].method, "PUT");
        assert_eq!(got[0].path, "/a%3Fx/b");
        assert_eq!(got[0].query.as_deref(), Some("k=v&w"));
        assert_eq!(got[0].path_and_query(), "/a%3Fx/b?k=v&w");
        assert_eq!(got[0].header("x-token"), Some("t"));
        assert_eq!(got[0].json(), serde_json::json!({"v": 1}));
        assert_eq!(got[0].answered, 204);
        assert_eq!((got[1].path.as_str(), got[1].answered), ("/a", 429));
        assert_eq!(got[2].query, None);
        assert_eq!(got[2].path_and_query(), "/a");
        assert_eq!(hooks.requests_to("/a%3F").len(), 1);
        assert_eq!(hooks.count(), 3);
    }

    #[tokio::test]
    async fn fail_next_comes_first_and_leaves_the_script() {
        let hooks = Receiver::start();
        hooks.reply_once("/x", Reply::status(404));
        hooks.fail_next(2, 503);
        assert_eq!(send(&hooks.url("/x")).await, 503);
        assert_eq!(send(&hooks.url("/y")).await, 503);
        assert_eq!(send(&hooks.url("/x")).await, 404);
        assert_eq!(send(&hooks.url("/x")).await, 200);
        let answered: Vec<u16> = hooks.requests().iter().map(|r| r.answered).collect();
        assert_eq!(answered, [503, 503, 404, 200]);
    }

    #[tokio::test]
    async fn a_wait_ends_on_arrival_or_at_its_real_time_deadline() {
        let hooks = Receiver::start();
        let started = Instant::now();
        assert!(hooks
            .wait_for(1, Duration::from_millis(200))
            .await
            .is_none());
        assert!(started.elapsed() >= Duration::from_millis(200));

        let url = hooks.url("/late");
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            send(&url).await
        });
        let got = hooks.wait_for(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got[0].path, "/late");
        assert_eq!(sender.await.unwrap(), 200);
        let got = hooks
            .wait_until(Duration::from_secs(10), |got| {
                got.iter().any(|r| r.path == "/late")
            })
            .await;
        assert!(got.is_some(), "a condition already true returns at once");
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_paused_clock_delays_are_virtual_and_waits_real() {
        let hooks = Receiver::start_here().await;
        hooks.fallback(Reply::status(200).after(Duration::from_secs(3600)));
        let started = tokio::time::Instant::now();
        let real = Instant::now();
        let url = hooks.url("/slow");
        let sender = tokio::spawn(async move { send(&url).await });
        // An idle paused runtime auto-advances to the next timer: a tokio timeout of 5 s would
        // end this wait before the request arrives were it not in real time.
        let got = hooks.wait_for(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            got[0].clock_at, started,
            "no virtual time passed before arrival"
        );
        assert_eq!(sender.await.unwrap(), 200);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3600) && waited < Duration::from_secs(3601),
            "{waited:?}"
        );
        assert!(
            real.elapsed() < Duration::from_secs(3600),
            "not in real time"
        );

        // Nothing else arrives: the wait ends at its real-time deadline, not at once.
        let real = Instant::now();
        assert!(hooks
            .wait_for(2, Duration::from_millis(300))
            .await
            .is_none());
        assert!(real.elapsed() >= Duration::from_millis(300));
    }
}
