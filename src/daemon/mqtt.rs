//! Publishing over MQTT: status, results, heatmaps, stats.
//!
//! One task owns the connection. Each connection is a fresh rumqttc client and
//! event loop with a clean session; the event loop is polled by its own task
//! (blocking it would stall the connection) and forwards events here. Every
//! publish goes through this task in order, so rumqttc's `Outgoing::Publish`
//! events, which come in request order, map packet ids back to outbox entries;
//! an entry leaves the outbox when the broker acknowledged all its parts
//! (result, and heatmap if any). After a disconnect everything still pending is
//! published again from the start, in order: subscribers may see a result
//! twice (same inspection id), never zero times.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, Notify};

use crate::config::{Broker, Mqtt};
use crate::daemon::outbox::Outbox;
use crate::daemon::stats::Stats;

/// Entries published and not yet acknowledged at a time.
const WINDOW: usize = 32;
/// How long a clean shutdown waits for pending results to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands from the daemon.
#[derive(Debug)]
pub enum Control {
    /// Flush, publish `offline`, disconnect, then answer.
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// Reconnect with new settings.
    Reconfigure(Box<Mqtt>),
}

/// Topics of one station.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `<prefix>/<station>/status`.
    pub status: String,
    /// `<prefix>/<station>/result`.
    pub result: String,
    /// `<prefix>/<station>/heatmap` (+ `/<id>`).
    pub heatmap: String,
    /// `<prefix>/<station>/stats`.
    pub stats: String,
}

impl Topics {
    /// Topics for `station` under `prefix`.
    pub fn new(prefix: &str, station: &str) -> Self {
        let base = format!("{prefix}/{station}");
        Self {
            status: format!("{base}/status"),
            result: format!("{base}/result"),
            heatmap: format!("{base}/heatmap"),
            stats: format!("{base}/stats"),
        }
    }
}

/// What a publish was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Entry(u64),
    Other,
}

/// Why a connection ended.
enum End {
    Lost(String),
    Shutdown(tokio::sync::oneshot::Sender<()>),
    Reconfigure(Box<Mqtt>),
}

/// The publisher task's state.
pub struct Publisher {
    /// MQTT settings.
    pub config: Mqtt,
    /// Station name.
    pub station: String,
    /// Durable results.
    pub outbox: Arc<Mutex<Outbox>>,
    /// Signalled when the outbox got an entry.
    pub wake: Arc<Notify>,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// Build rumqttc options from the configuration (reads secrets and TLS files).
pub fn options(c: &Mqtt, topics: &Topics) -> std::io::Result<MqttOptions> {
    let (host, port) = match &c.broker {
        Broker::External { host, port } => (host.clone(), *port),
        Broker::Embedded { listen } => {
            let addr: std::net::SocketAddr = listen
                .parse()
                .map_err(|e| std::io::Error::other(format!("embedded_listen: {e}")))?;
            let ip = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            (ip, addr.port())
        }
    };
    let mut o = MqttOptions::new(c.client_id.clone(), host, port);
    o.set_keep_alive(c.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(c.max_packet_bytes, c.max_packet_bytes)
        .set_request_channel_capacity(64)
        .set_inflight(100)
        .set_last_will(LastWill::new(&topics.status, "offline", QoS::AtLeastOnce, true));
    if let Some(user) = &c.username {
        let password = match &c.password {
            Some(secret) => secret.read()?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if let Some(tls) = &c.tls {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let client_auth = match &tls.client_auth {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: read(&tls.ca_file)?,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

impl Publisher {
    /// Run until told to shut down.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let mut backoff = self.config.reconnect_min;
        loop {
            match self.session(&mut control, &mut backoff).await {
                End::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
                End::Reconfigure(c) => {
                    log::info!("MQTT settings changed: reconnecting");
                    self.config = *c;
                    backoff = self.config.reconnect_min;
                }
                End::Lost(why) => {
                    log::warn!("MQTT connection lost: {why}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        c = control.recv() => match c {
                            // Not connected: pending results stay in the outbox for the next start.
                            Some(Control::Shutdown(done)) => {
                                let _ = done.send(());
                                return;
                            }
                            None => return,
                            Some(Control::Reconfigure(c)) => self.config = *c,
                        }
                    }
                    backoff = (backoff * 2).min(self.config.reconnect_max);
                }
            }
        }
    }

    fn topics(&self) -> Topics {
        Topics::new(&self.config.prefix, &self.station)
    }

    async fn session(&mut self, control: &mut mpsc::Receiver<Control>, backoff: &mut Duration) -> End {
        let topics = self.topics();
        let opts = match options(&self.config, &topics) {
            Ok(o) => o,
            Err(e) => return End::Lost(format!("cannot configure the connection: {e}")),
        };
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (etx, mut erx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if etx.send(Ok(ev)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = etx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        let end = self.connected(&client, &mut erx, control, backoff, &topics).await;
        poller.abort();
        end
    }

    async fn connected(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::UnboundedReceiver<Result<Event, String>>,
        control: &mut mpsc::Receiver<Control>,
        backoff: &mut Duration,
        topics: &Topics,
    ) -> End {
        // Wait for the broker to accept us.
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(e),
                    None => return End::Lost("event loop ended".into()),
                },
                c = control.recv() => match c {
                    Some(Control::Reconfigure(c)) => return End::Reconfigure(c),
                    Some(Control::Shutdown(done)) => return End::Shutdown(done),
                    None => return End::Lost("control channel closed".into()),
                },
            }
        }
        *backoff = self.config.reconnect_min;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "MQTT connected; publishing under {}",
            topics.status.trim_end_matches("/status")
        );
        let mut st = State::default();
        if let Err(e) = st
            .publish(
                client,
                &topics.status,
                QoS::AtLeastOnce,
                true,
                b"online".to_vec(),
                Tag::Other,
            )
            .await
        {
            return End::Lost(e);
        }
        let mut stats_tick = tokio::time::interval(self.config.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(e) = self.fill(client, &mut st, topics).await {
                return End::Lost(e);
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                ev = events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev, &mut st),
                    Some(Err(e)) => return End::Lost(e),
                    None => return End::Lost("event loop ended".into()),
                },
                _ = stats_tick.tick() => {
                    let snap = self.stats.snapshot(&self.station).to_string().into_bytes();
                    if let Err(e) = st.publish(client, &topics.stats, QoS::AtMostOnce, false, snap, Tag::Other).await {
                        return End::Lost(e);
                    }
                }
                c = control.recv() => match c {
                    Some(Control::Reconfigure(c)) => {
                        let _ = client.disconnect().await;
                        return End::Reconfigure(c);
                    }
                    Some(Control::Shutdown(done)) => {
                        self.flush(client, events, &mut st, topics).await;
                        return End::Shutdown(done);
                    }
                    None => return End::Lost("control channel closed".into()),
                },
            }
        }
    }

    /// Publish pending entries in order, up to the window.
    async fn fill(&self, client: &AsyncClient, st: &mut State, topics: &Topics) -> Result<(), String> {
        while st.parts.len() < WINDOW {
            let next = {
                let ob = self
                    .outbox
                    .lock()
                    .map_err(|_| "outbox lock poisoned".to_string())?;
                let Some(seq) = ob.index().after(st.last_sent).next() else {
                    return Ok(());
                };
                match ob.read(seq) {
                    Ok(e) => e.map(|e| (seq, e)),
                    Err(e) => {
                        log::error!("outbox entry #{seq} unreadable: {e}; skipping it");
                        None
                    }
                }
            };
            let Some((seq, entry)) = next else {
                st.last_sent += 1;
                continue;
            };
            st.last_sent = seq;
            let parts = 1 + usize::from(entry.heatmap.is_some());
            st.parts.insert(seq, parts);
            st.publish(
                client,
                &topics.result,
                QoS::AtLeastOnce,
                false,
                entry.json,
                Tag::Entry(seq),
            )
            .await?;
            if let Some(jpg) = entry.heatmap {
                let topic = format!("{}/{}", topics.heatmap, entry.id);
                st.publish(client, &topic, QoS::AtLeastOnce, false, jpg, Tag::Entry(seq))
                    .await?;
            }
        }
        Ok(())
    }

    fn on_event(&self, ev: Event, st: &mut State) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = st.fifo.pop_front();
                if pkid != 0 {
                    if let Some(tag) = tag {
                        st.pkids.insert(pkid, tag);
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Tag::Entry(seq)) = st.pkids.remove(&ack.pkid) {
                    let done = match st.parts.get_mut(&seq) {
                        Some(n) => {
                            *n -= 1;
                            *n == 0
                        }
                        None => false,
                    };
                    if done {
                        st.parts.remove(&seq);
                        if let Ok(mut ob) = self.outbox.lock() {
                            if let Err(e) = ob.remove(seq) {
                                log::error!("outbox: cannot remove delivered #{seq}: {e}");
                            }
                            self.stats
                                .outbox_pending
                                .store(ob.index().len(), Ordering::Relaxed);
                        }
                        self.stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        }
    }

    /// Deliver what is pending (bounded by [`FLUSH_TIMEOUT`]), publish `offline`, disconnect.
    async fn flush(
        &self,
        client: &AsyncClient,
        events: &mut mpsc::UnboundedReceiver<Result<Event, String>>,
        st: &mut State,
        topics: &Topics,
    ) {
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        loop {
            if self.fill(client, st, topics).await.is_err() {
                return;
            }
            let empty = self.outbox.lock().map(|ob| ob.index().is_empty()).unwrap_or(true);
            if empty {
                break;
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev, st),
                    _ => return,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    log::warn!("shutdown: results still pending stay in the outbox for the next start");
                    break;
                }
            }
        }
        let _ = st
            .publish(
                client,
                &topics.status,
                QoS::AtLeastOnce,
                true,
                b"offline".to_vec(),
                Tag::Other,
            )
            .await;
        let _ = client.disconnect().await;
        // Let the event loop write the last packets.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = events.recv().await {}
        })
        .await;
    }
}

/// Per-connection publish bookkeeping.
#[derive(Default)]
struct State {
    /// Tags of publishes requested and not yet seen going out, in order.
    fifo: VecDeque<Tag>,
    /// Packet id → what it carries, until acknowledged.
    pkids: HashMap<u16, Tag>,
    /// Entries in flight → parts not yet acknowledged.
    parts: std::collections::BTreeMap<u64, usize>,
    /// Highest seq handed to the client on this connection.
    last_sent: u64,
}

impl State {
    async fn publish(
        &mut self,
        client: &AsyncClient,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        tag: Tag,
    ) -> Result<(), String> {
        self.fifo.push_back(tag);
        client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|e| e.to_string())
    }
}
