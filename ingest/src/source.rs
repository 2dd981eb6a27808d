//! The MQTT source: one task owns rumqttc's `EventLoop`, turns PUBLISHes into [`Inbound`]
//! items and reconnects with backoff.
//!
//! **The task never waits on the pipeline.** rumqttc only makes progress (reads, sends
//! keep-alive pings) while `EventLoop::poll` is being called, and this task also writes the
//! PUBACKs the pipeline made ready; a task stuck in `tx.send().await` would stall all of that,
//! and a full channel plus an un-written ack would be a deadlock. So
//! items go out with `try_send`, and when the channel is full they wait in a local queue
//! (`overflow`), moved on after every event. No item is lost or reordered.
//!
//! **What bounds memory is the broker's in-flight window.** A broker sends a client at most its
//! window of un-acked QoS 1 messages (Mosquitto 20 by default, AWS IoT 100, the embedded broker
//! 100); the pipeline acks only after the spool, so a slow pipeline stops the broker, not this
//! task. `mqtt.inflight` sizes the channel; with it at least the window, `overflow` only fills
//! after reconnects (the broker delivers the un-acked messages again while the old copies are
//! still queued). As a last resort, if `overflow` reaches `mqtt.inflight` items too, the task
//! waits for room in the channel without polling; a long stall there can cost a keep-alive
//! disconnect, which a persistent session survives.
//!
//! **Waking up.** The overflow is moved on after each event rumqttc reports and after each
//! write of PUBACKs, which the acker wakes the task for (keep-alive pings are events too). A
//! pipeline that drains the channel acks what it took, and so always wakes the task.
//!
//! **Connections.** `clean_session = false` (a persistent session under a stable client id),
//! QoS 1 subscriptions sent again after every CONNACK (also when the broker reports the session
//! present: it is cheap and covers a broker that lost it), manual acks ([`crate::ack`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccstream_common::time::now_ms;
use ccstream_common::{redact, Backoff};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, PubAck, PubRec, Publish, QoS,
    StateError, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn, Instrument};

use crate::ack::{AckShared, AckToken, Acker, ReadyAck};
use crate::config::{derive_client_id, BrokerEndpoint, MqttConfig, MQTT_MAX_PACKET_BYTES};
use crate::error::Error;
use crate::telemetry::SourceMetrics;
use crate::tls;
use crate::topic::{Route, Routes};

/// A connection that lasted this long resets the reconnect backoff; one that drops sooner (a
/// broker that accepts and then throws the client out) keeps backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Largest packet the source sends (SUBSCRIBE, PUBACK, PINGREQ, DISCONNECT: all small).
const MAX_OUTGOING_PACKET_BYTES: usize = 256 * 1024;

/// A message for the pipeline. Ack it with [`Acker::ack`] once it is safe.
///
/// `dup` and `pkid` describe the delivery: the PUBLISH's DUP flag (set by the broker when it
/// sends a QoS 1 message again, after a reconnect, because it has no PUBACK for it — this
/// process may have received and stored it already) and its packet identifier (which MQTT
/// requires a redelivery to keep: 3.1.1 section 4.4; 0 for QoS 0). A message with `dup`
/// false was not sent to this session before.
#[derive(Debug)]
pub enum Inbound {
    /// A shadow update (spec 9.1): `$aws/things/<thingName>/shadow/update` or
    /// `thing-update/<domainPath>/<thingName>`.
    Shadow(ShadowUpdate),
    /// A life cycle event (spec 1.3) on one of `mqtt.event_topics`.
    Event {
        /// The full topic (`event/<domainPath>`).
        topic: String,
        /// When this process received the message, in ms since the Unix epoch.
        received_at_ms: u64,
        /// The payload as received, at most `mqtt.max_payload_bytes` long.
        payload: Bytes,
        /// The DUP flag: the broker sent this message before.
        dup: bool,
        /// The packet identifier (kept by a redelivery; 0 for QoS 0).
        pkid: u16,
        ack: AckToken,
    },
}

impl Inbound {
    /// The ack token, for a message the pipeline is done with.
    pub fn into_ack(self) -> AckToken {
        match self {
            Inbound::Shadow(ShadowUpdate { ack, .. }) | Inbound::Event { ack, .. } => ack,
        }
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        match self {
            Inbound::Shadow(ShadowUpdate { payload, .. }) | Inbound::Event { payload, .. } => {
                payload
            }
        }
    }

    /// The PUBLISH's DUP flag: the broker delivers this message again.
    pub fn is_dup(&self) -> bool {
        match self {
            Inbound::Shadow(ShadowUpdate { dup, .. }) | Inbound::Event { dup, .. } => *dup,
        }
    }

    /// The PUBLISH's packet identifier (0 for QoS 0).
    pub fn pkid(&self) -> u16 {
        match self {
            Inbound::Shadow(ShadowUpdate { pkid, .. }) | Inbound::Event { pkid, .. } => *pkid,
        }
    }
}

/// A shadow update, as the pipeline takes it: a struct of its own so that it can be kept (in
/// a batch waiting for its threshold decisions) without unpacking the message.
#[derive(Debug)]
pub struct ShadowUpdate {
    /// The thing, from the topic.
    pub thing_name: String,
    /// The domain path of a `thing-update/<domainPath>/<thingName>` topic without the implicit
    /// root (`""` for a root thing, `"sub1/sub2"` below it); `None` for `$aws/things/...`. An
    /// empty path allocates nothing.
    pub topic_domain: Option<Box<str>>,
    /// When this process received the message, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The payload as received, at most `mqtt.max_payload_bytes` long.
    pub payload: Bytes,
    /// The DUP flag: the broker sent this message before.
    pub dup: bool,
    /// The packet identifier (kept by a redelivery; 0 for QoS 0).
    pub pkid: u16,
    pub ack: AckToken,
}

/// Cheap, cloneable view of the connection state, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    inner: Arc<StatusFlags>,
}

#[derive(Debug, Default)]
struct StatusFlags {
    connected: AtomicBool,
    subscribed: AtomicBool,
    connect_failures: AtomicU64,
}

impl SourceStatus {
    /// Connected to the broker (CONNACK received, connection not yet lost).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Connected, and the broker has answered this connection's SUBSCRIBE.
    pub fn is_subscribed(&self) -> bool {
        self.is_connected() && self.inner.subscribed.load(Ordering::Relaxed)
    }

    /// Connection attempts that ended without a connection (no broker, TLS handshake refused,
    /// CONNACK with an error code) since the source started: the event a caller can wait on
    /// instead of guessing how long a failed attempt takes. Lost connections do not count.
    pub fn connect_failures(&self) -> u64 {
        self.inner.connect_failures.load(Ordering::Relaxed)
    }

    fn set(&self, connected: bool, subscribed: bool) {
        self.inner.connected.store(connected, Ordering::Relaxed);
        self.inner.subscribed.store(subscribed, Ordering::Relaxed);
    }
}

/// Controls a running source: status and shutdown. Dropping it also asks the source to stop.
pub struct SourceHandle {
    status: SourceStatus,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    client_id: String,
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("client_id", &self.client_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl SourceHandle {
    /// Connected to the broker right now (an atomic load).
    pub fn is_connected(&self) -> bool {
        self.status.is_connected()
    }

    /// A cloneable status for readiness checks.
    pub fn status(&self) -> SourceStatus {
        self.status.clone()
    }

    /// The client id in use (the key of the broker's persistent session).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Disconnects cleanly and ends the task, waiting at most `grace`.
    ///
    /// Ack what you can first (stop reading the receiver, ack the messages already made safe):
    /// PUBACKs queued before this call go out before the DISCONNECT. Messages not acked stay
    /// in the broker's session and are delivered again on the next start.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), Error> {
        self.signal_shutdown();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(grace, &mut task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                error!(error = %e, "MQTT source task failed");
                Ok(())
            }
            Err(_) => {
                task.abort();
                Err(Error::ShutdownTimeout(grace))
            }
        }
    }

    fn signal_shutdown(&self) {
        // The task writes the PUBACKs already in the outbox, then queues the DISCONNECT.
        self.shutdown.send_replace(true);
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.signal_shutdown();
        }
    }
}

/// Starts MQTT sources.
pub struct MqttSource;

impl MqttSource {
    /// Validates `cfg`, reads its TLS files and spawns the source's task on the current tokio
    /// runtime. `stack` and `hostname` make the default client id (`ccstream-<stack>-<hostname>`)
    /// when `mqtt.client_id` is not set.
    ///
    /// Returns the stream of messages (bounded, `mqtt.inflight` items), the [`Acker`] for them
    /// and the handle. The connection is made in the background: a broker that is down is
    /// retried with backoff, not reported here.
    pub fn start(
        cfg: &MqttConfig,
        stack: &str,
        hostname: &str,
    ) -> Result<(mpsc::Receiver<Inbound>, Acker, SourceHandle), Error> {
        cfg.validate()?;
        let BrokerEndpoint {
            mut options,
            tls,
            client_id,
        } = cfg.endpoint(&derive_client_id(stack, hostname))?;
        if tls {
            let tls_config = tls::client_config(cfg)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config),
            )));
        }
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.into()))
            // Read packets of any size MQTT allows, so that an oversize message is counted and
            // acked here instead of failing the connection (the broker would redeliver it after
            // every reconnect, forever). Bound memory with the broker's own limit (Mosquitto
            // `message_size_limit`, 128 KiB on AWS IoT, 1 MiB on the embedded broker).
            .set_max_packet_size(MQTT_MAX_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES);

        // The request queue carries SUBSCRIBE and DISCONNECT only (PUBACKs are written by the
        // source's task itself, see `ack`).
        let (client, eventloop) = AsyncClient::new(options, 64);
        let flush_timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
        let metrics = SourceMetrics::new();
        let acks = AckShared::new(metrics.acks_stale.clone(), metrics.unacked_dropped.clone());
        let (tx, rx) = mpsc::channel(cfg.inflight);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let status = SourceStatus::default();
        metrics.connected.set(0.0);

        let shadow = cfg.shadow_subscriptions();
        let mut subscriptions: Vec<SubscribeFilter> = Vec::new();
        for filter in shadow.iter().chain(&cfg.event_topics) {
            if !subscriptions.iter().any(|s| &s.path == filter) {
                subscriptions.push(SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce));
            }
        }
        let worker = Worker {
            eventloop,
            client: client.clone(),
            acks: acks.clone(),
            tx,
            overflow: VecDeque::new(),
            overflow_cap: cfg.inflight,
            receiver_gone: false,
            pause_warned: false,
            routes: Routes::new(shadow, cfg.event_topics.clone()),
            subscriptions,
            max_payload: cfg.max_payload_bytes,
            backoff: Backoff::new(cfg.reconnect_initial(), cfg.reconnect_max()),
            status: status.clone(),
            shutdown: shutdown_rx,
            metrics,
            ack_buf: Vec::new(),
            flush_timeout,
        };
        info!(
            url = %redact::url_password(&cfg.url),
            client_id = %client_id,
            topics = ?worker.routes,
            "starting MQTT source"
        );
        let span = tracing::info_span!("mqtt_source", client_id = %client_id);
        let task = tokio::spawn(worker.run().instrument(span));
        Ok((
            rx,
            Acker::new(acks),
            SourceHandle {
                status,
                shutdown: shutdown_tx,
                task: Some(task),
                client_id,
            },
        ))
    }
}

/// What the connected source's task does next.
enum Step {
    WriteAcks,
    Disconnect,
    Polled(Result<Event, ConnectionError>),
}

struct Worker {
    eventloop: EventLoop,
    client: AsyncClient,
    acks: Arc<AckShared>,
    tx: mpsc::Sender<Inbound>,
    /// Items the channel had no room for, oldest first (see the module docs).
    overflow: VecDeque<Inbound>,
    overflow_cap: usize,
    receiver_gone: bool,
    pause_warned: bool,
    routes: Routes,
    subscriptions: Vec<SubscribeFilter>,
    max_payload: usize,
    backoff: Backoff,
    status: SourceStatus,
    shutdown: watch::Receiver<bool>,
    metrics: SourceMetrics,
    /// The PUBACKs being written (swapped with the acker's outbox).
    ack_buf: Vec<ReadyAck>,
    /// How long a flush of PUBACKs may take (rumqttc's connection timeout).
    flush_timeout: Duration,
}

impl Worker {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut connected_at: Option<Instant> = None;
        let mut disconnecting = false;
        loop {
            let polled = if connected_at.is_some() {
                // Connected. PUBACKs first (biased), so that the ones acked before shutdown go
                // out before the DISCONNECT. Interrupting `poll` is safe: what it read stays in
                // rumqttc's state and comes out of the next call, what it buffered for writing
                // goes out with the next flush.
                let step = tokio::select! {
                    biased;
                    () = self.acks.outbox_ready() => Step::WriteAcks,
                    _ = self.shutdown.wait_for(|stop| *stop), if !disconnecting => Step::Disconnect,
                    polled = self.eventloop.poll() => Step::Polled(polled),
                };
                match step {
                    Step::WriteAcks => {
                        self.write_acks().await;
                        self.drain_overflow();
                        continue;
                    }
                    Step::Disconnect => {
                        disconnecting = true;
                        self.write_acks().await;
                        // Ends with `Outgoing::Disconnect` below.
                        let _ = self.client.try_disconnect();
                        continue;
                    }
                    Step::Polled(polled) => polled,
                }
            } else {
                // Connecting: a broker that does not answer must not delay shutdown. Dropping a
                // connect in progress only drops a socket that carried no session state yet.
                tokio::select! {
                    biased;
                    _ = self.shutdown.wait_for(|stop| *stop) => break,
                    polled = self.eventloop.poll() => polled,
                }
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    connected_at = Some(Instant::now());
                    self.pause_warned = false;
                    self.acks.reset();
                    self.status.set(true, false);
                    self.metrics.connected_ok.increment(1);
                    self.metrics.connected.set(1.0);
                    info!(
                        session_present = connack.session_present,
                        "connected to MQTT broker"
                    );
                    if let Err(e) = self.client.try_subscribe_many(self.subscriptions.clone()) {
                        // Cannot happen with the queue sized as it is; a reconnect retries.
                        error!(error = %e, "cannot queue the SUBSCRIBE");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.on_publish(publish).await,
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let refused = suback
                        .return_codes
                        .iter()
                        .zip(&self.subscriptions)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, filter)| filter.path.as_str())
                        .collect::<Vec<_>>();
                    if refused.is_empty() {
                        debug!("subscribed");
                    } else {
                        self.metrics
                            .subscribe_failures
                            .increment(refused.len() as u64);
                        error!(filters = ?refused, "the MQTT broker refused subscriptions");
                    }
                    self.status.set(true, true);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    info!("disconnected from MQTT broker (shutdown)");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let was_connected = connected_at.take();
                    // Stale tokens first, then drop the PUBACKs still in rumqttc's queue: an ack
                    // queued between rumqttc's own clean-up (inside poll) and this reset would
                    // otherwise be written on the next connection.
                    self.acks.reset();
                    self.eventloop.clean();
                    self.status.set(false, false);
                    self.metrics.connected.set(0.0);
                    if *self.shutdown.borrow() {
                        break;
                    }
                    if let Some(since) = was_connected {
                        self.metrics.lost.increment(1);
                        if since.elapsed() >= STABLE_CONNECTION {
                            attempt = 0;
                        }
                    } else {
                        self.status
                            .inner
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if matches!(e, ConnectionError::ConnectionRefused(_)) {
                            self.metrics.connect_refused.increment(1);
                        } else {
                            self.metrics.connect_failed.increment(1);
                        }
                    }
                    attempt = attempt.saturating_add(1);
                    let delay = self.backoff.delay(attempt);
                    if was_connected.is_some() {
                        warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                    } else {
                        warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "cannot connect to MQTT broker");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.wait_for(|stop| *stop) => break,
                    }
                }
            }
            self.drain_overflow();
        }
        self.status.set(false, false);
        self.metrics.connected.set(0.0);
    }

    /// Writes the PUBACKs in the acker's outbox to the connection and flushes once (see the
    /// `ack` module docs for why not through rumqttc's request queue). A write that fails is
    /// only logged: the connection is then broken, the next `poll` reports it, and the broker
    /// delivers the messages again.
    async fn write_acks(&mut self) {
        self.acks.take_outbox(&mut self.ack_buf);
        if self.ack_buf.is_empty() {
            return;
        }
        let written = self.ack_buf.len();
        let result = match self.eventloop.network.as_mut() {
            // Not connected: these belong to a connection that is gone.
            None => Ok(()),
            Some(network) => {
                let mut result = Ok(());
                for ready in &self.ack_buf {
                    let packet = match ready.qos {
                        QoS::ExactlyOnce => Packet::PubRec(PubRec::new(ready.pkid)),
                        _ => Packet::PubAck(PubAck::new(ready.pkid)),
                    };
                    result = network.write(packet).await;
                    if result.is_err() {
                        break;
                    }
                }
                if result.is_ok() {
                    result = match tokio::time::timeout(self.flush_timeout, network.flush()).await {
                        Ok(r) => r,
                        Err(_) => Err(StateError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "flushing PUBACKs timed out",
                        ))),
                    };
                }
                result
            }
        };
        self.ack_buf.clear();
        match result {
            Ok(()) => {
                self.metrics.acks_written.increment(written as u64);
                self.metrics.ack_flushes.increment(1);
            }
            Err(e) => {
                debug!(error = %e, "cannot write PUBACKs; the broker delivers the messages again")
            }
        }
    }

    async fn on_publish(&mut self, publish: Publish) {
        let received_at_ms = now_ms();
        let Publish {
            topic,
            payload,
            qos,
            pkid,
            dup,
            ..
        } = publish;
        let ack = self.acks.register(pkid, qos);
        let item = match self.routes.classify(&topic) {
            Route::Shadow(shadow) => {
                self.metrics.shadow.increment(1);
                if self.too_large(&topic, payload.len()) {
                    self.ack_now(ack);
                    return;
                }
                let topic_domain = shadow.domain_path.map(Box::<str>::from);
                // The name is a slice of the topic: cut the topic down to it rather than
                // allocate a copy (one allocation less per observation).
                let start = shadow.thing_name.as_ptr() as usize - topic.as_ptr() as usize;
                let end = start + shadow.thing_name.len();
                let mut thing_name = topic;
                thing_name.truncate(end);
                thing_name.drain(..start);
                Inbound::Shadow(ShadowUpdate {
                    thing_name,
                    topic_domain,
                    received_at_ms,
                    payload,
                    dup,
                    pkid,
                    ack,
                })
            }
            Route::Event => {
                self.metrics.event.increment(1);
                if self.too_large(&topic, payload.len()) {
                    self.ack_now(ack);
                    return;
                }
                Inbound::Event {
                    topic,
                    received_at_ms,
                    payload,
                    dup,
                    pkid,
                    ack,
                }
            }
            Route::Unroutable(reason) => {
                self.metrics.other.increment(1);
                self.metrics.bad_topic.increment(1);
                debug!(topic = %topic, reason = %reason, "message on an unroutable topic: acked and dropped");
                self.ack_now(ack);
                return;
            }
        };
        self.forward(item).await;
    }

    fn too_large(&self, topic: &str, len: usize) -> bool {
        if len <= self.max_payload {
            return false;
        }
        self.metrics.too_large.increment(1);
        warn!(
            topic = %topic,
            bytes = len,
            limit = self.max_payload,
            "payload over mqtt.max_payload_bytes: acked and dropped"
        );
        true
    }

    /// Acks a message the pipeline never sees, in its place in the order.
    fn ack_now(&self, token: AckToken) {
        self.acks.ack(token);
    }

    async fn forward(&mut self, item: Inbound) {
        if self.receiver_gone {
            // Not acked: the broker delivers it again to the next run.
            return;
        }
        if self.overflow.is_empty() {
            match self.tx.try_send(item) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(item)) => self.overflow.push_back(item),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.on_receiver_gone();
                    return;
                }
            }
        } else {
            self.overflow.push_back(item);
        }
        if self.overflow.len() >= self.overflow_cap {
            self.wait_for_room().await;
        }
    }

    fn drain_overflow(&mut self) {
        while let Some(item) = self.overflow.pop_front() {
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.overflow.push_front(item);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.on_receiver_gone();
                    return;
                }
            }
        }
    }

    /// The last resort of the module docs: the broker sent more than the channel and the
    /// overflow hold, so stop polling until the pipeline takes some.
    async fn wait_for_room(&mut self) {
        if !self.pause_warned {
            // Once per connection: a too small mqtt.inflight would otherwise log per message.
            self.pause_warned = true;
            warn!(
                held = self.overflow.len(),
                "MQTT source holds twice mqtt.inflight un-acked messages; pausing reads until \
                 the pipeline catches up (raise mqtt.inflight to the broker's in-flight window)"
            );
        }
        while self.overflow.len() >= self.overflow_cap {
            let permit = tokio::select! {
                permit = self.tx.reserve() => permit,
                _ = self.shutdown.wait_for(|stop| *stop) => return,
            };
            let Ok(permit) = permit else {
                break;
            };
            if let Some(item) = self.overflow.pop_front() {
                permit.send(item);
            }
        }
        if self.tx.is_closed() {
            self.on_receiver_gone();
        }
    }

    fn on_receiver_gone(&mut self) {
        if !self.receiver_gone {
            warn!(
                "the MQTT source's receiver was dropped; messages are no longer forwarded or acked"
            );
        }
        self.receiver_gone = true;
        self.overflow.clear();
    }
}
