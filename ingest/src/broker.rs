//! The embedded MQTT broker (rumqttd), so that ccstream on defaults needs no other server.
//!
//! What it is and is not (rumqttd 0.20, read from its source and checked by the tests):
//! - **In memory only.** A persistent session (`clean_session = false`) survives a *client's*
//!   reconnect: rumqttd keeps the subscriptions and a cursor at the first un-acked message and
//!   delivers from there, including what was published while the client was away. But the
//!   broker runs inside ccstream: when ccstream stops or crashes, every queued message and
//!   every session is gone, and messages the broker had accepted (PUBACKed to the device) but
//!   ccstream had not yet spooled are lost. While ccstream is down devices cannot publish at
//!   all. Use an external broker with persistence (Mosquitto, EMQX, AWS IoT) when that matters.
//! - **Bounded by its commit log.** Messages are kept per subscribed filter in an in-memory log
//!   of [`SEGMENT_BYTES`] × [`SEGMENT_COUNT`]; a subscriber more than that behind loses the
//!   oldest messages. Messages published before anyone subscribed to a matching filter are
//!   dropped.
//! - **No `$` topics.** A subscription to a filter starting with `$` (`$aws/things/+/...`) gets
//!   the client disconnected and `$...` topics are never routed, so devices publish shadow
//!   updates to `thing-update/<domainPath>/<thingName>` (spec 9.1) here; that is the default
//!   subscription with the embedded broker.
//! - **In-order acks.** It disconnects a client that acks out of order (the source never does)
//!   and sends a subscriber at most 100 un-acked QoS 1 messages (fixed in rumqttd).
//! - **No stop.** rumqttd has no shutdown: its threads run until the process exits.
//!
//! Start-up fails with [`Error::BrokerBind`] when the port is taken: rumqttd itself only logs a
//! failed bind on its listener thread and carries on without a listener, so the address is
//! bound once here first, and the broker is then probed with a real MQTT CONNECT before
//! [`EmbeddedBroker::start`] returns.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

use crate::config::connect_addr;
use crate::error::Error;

/// Largest packet a client may send the embedded broker. Above `mqtt.max_payload_bytes`
/// (128 KiB) on purpose: an oversize shadow update reaches ccstream, is counted and dropped,
/// instead of the broker cutting the device's connection without a trace in ccstream's metrics.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Concurrent client connections.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Size of one in-memory log segment per subscribed filter.
pub const SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// Segments kept per filter before the oldest is dropped.
pub const SEGMENT_COUNT: usize = 8;
/// How long [`EmbeddedBroker::start`] waits for the broker to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts rumqttd with one MQTT 3.1.1 listener on `listen` and waits (at most 5 s, blocking
    /// the calling thread) until it answers an MQTT CONNECT. Port 0 picks a free port.
    pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, Error> {
        // rumqttd binds on its own thread and only logs a failure; find out here instead.
        let probe = TcpListener::bind(listen).map_err(|source| Error::BrokerBind {
            addr: listen,
            source,
        })?;
        let addr = probe.local_addr().map_err(|source| Error::BrokerBind {
            addr: listen,
            source,
        })?;
        drop(probe);

        let config = broker_config(addr);
        let thread = std::thread::Builder::new()
            .name("mqtt-broker".to_owned())
            .spawn(move || {
                let mut broker = Broker::new(config);
                // `start` blocks for as long as a listener runs.
                match broker.start() {
                    Ok(()) => error!(%addr, "embedded MQTT broker stopped: its listener failed"),
                    Err(e) => error!(%addr, error = %e, "embedded MQTT broker failed"),
                }
            })
            .map_err(|e| Error::BrokerStart {
                addr,
                message: format!("cannot start its thread: {e}"),
            })?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if thread.is_finished() {
                return Err(Error::BrokerStart {
                    addr,
                    message: "its listener failed right after start (port taken meanwhile?); \
                              see the rumqttd error in the log"
                        .to_owned(),
                });
            }
            match mqtt_ping(connect_addr(addr)) {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::BrokerStart {
                        addr,
                        message: format!(
                            "does not answer MQTT CONNECT after {START_TIMEOUT:?}: {e}"
                        ),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        info!(%addr, "embedded MQTT broker listening");
        Ok(EmbeddedBroker { addr, thread })
    }

    /// The address it listens on (with the port chosen when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// False once its listener has failed.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

fn broker_config(addr: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PACKET_BYTES,
        // Packets read from one connection per batch, not the QoS 1 window (fixed at 100).
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    let server = ServerSettings {
        name: "ccstream-embedded".to_owned(),
        listen: addr,
        tls: None,
        // rumqttd sleeps this long after each accepted connection.
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

/// One MQTT 3.1.1 CONNECT (clean session) / CONNACK / DISCONNECT exchange: proves the broker
/// is up and speaks MQTT, without leaving an error in its log as a bare TCP probe would.
fn mqtt_ping(addr: SocketAddr) -> std::io::Result<()> {
    const CLIENT_ID: &[u8] = b"ccstream-start-probe";
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut connect = vec![0x10, (10 + 2 + CLIENT_ID.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    connect.extend_from_slice(&(CLIENT_ID.len() as u16).to_be_bytes());
    connect.extend_from_slice(CLIENT_ID);
    stream.write_all(&connect)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "unexpected answer to CONNECT: {connack:02x?}"
        )));
    }
    stream.write_all(&[0xe0, 0x00])?;
    Ok(())
}
