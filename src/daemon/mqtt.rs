//! Publishing over MQTT: status, results, heatmaps, stats.
//!
//! One task owns the connection. Each connection is a fresh rumqttc client and
//! event loop with a clean session; the event loop is polled by its own task
//! (blocking it would stall the connection) and forwards events here. Every
//! publish goes through this task in order; the pure [`Delivery`] state maps
//! rumqttc's packet ids back to outbox entries, and an entry leaves the outbox
//! when the broker acknowledged all its parts (result, and heatmap if any).
//! After a disconnect everything still pending is published again from the
//! start, in order: subscribers may see a result twice (same inspection id),
//! never zero times. The settings come from a `watch` channel: a change of the
//! connection or the prefix reconnects, a change of the stats period applies
//! at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{Broker, Mqtt};
use crate::daemon::delivery::Delivery;
use crate::daemon::outbox::{Entry, Outbox};
use crate::daemon::stats::Stats;
use crate::daemon::topics::Topics;

/// Entries published and not yet acknowledged at a time.
const WINDOW: usize = 32;
/// How long a clean shutdown waits for pending results to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection the broker closes this soon after accepting it, again and
/// again, is most likely taken over by another client with our client id.
const TAKEOVER_WINDOW: Duration = Duration::from_secs(30);
/// Short sessions in a row that make a takeover.
const TAKEOVER_SESSIONS: u32 = 3;

/// Commands from the daemon.
#[derive(Debug)]
pub enum Control {
    /// Flush, publish `offline`, disconnect, then answer.
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// Publish this answer to a command on `…/cmd/reply` (dropped while
    /// disconnected: the requester's own timeout tells it).
    Reply(Vec<u8>),
}

/// Why a connection ended.
enum End {
    Lost(String),
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// New connection settings or prefix.
    Reconfigure,
}

/// The publisher task's state.
pub struct Publisher {
    /// Live MQTT settings.
    pub settings: watch::Receiver<Mqtt>,
    /// Station name.
    pub station: String,
    /// Durable results.
    pub outbox: Arc<Mutex<Outbox>>,
    /// Signalled when the outbox got an entry.
    pub wake: Arc<Notify>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Where commands arriving on `…/cmd` go (`[commands] enabled`).
    pub commands: Option<mpsc::Sender<super::commands::Incoming>>,
    /// The station's state, published retained on `…/state` (empty: none yet).
    pub state: watch::Receiver<Vec<u8>>,
}

/// Build rumqttc options from the configuration (reads secrets and TLS files).
pub fn options(c: &Mqtt, topics: &Topics) -> std::io::Result<MqttOptions> {
    let (host, port) = match &c.broker {
        Broker::External { host, port } => (host.clone(), *port),
        Broker::Embedded { listen, .. } => {
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
        .set_last_will(LastWill::new(topics.status(), "offline", QoS::AtLeastOnce, true));
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
        let mut config = self.settings.borrow_and_update().clone();
        let mut delivery = Delivery::new(WINDOW);
        let mut backoff = config.reconnect_min;
        let mut short_sessions = 0u32;
        loop {
            let mut connected_at = None;
            let end = self
                .session(&mut config, &mut delivery, &mut control, &mut connected_at)
                .await;
            if let End::Lost(why) = &end {
                // A healthy session resets the backoff; one the broker ends
                // at once, again and again, does not (no fight over an id).
                match connected_at.map(|t: tokio::time::Instant| t.elapsed()) {
                    Some(d) if d < TAKEOVER_WINDOW && why.contains("closed by peer") => {
                        short_sessions += 1;
                        if short_sessions >= TAKEOVER_SESSIONS {
                            self.stats.mqtt_takeovers.fetch_add(1, Ordering::Relaxed);
                            log::error!(
                                "the broker closed the connection {short_sessions} times in a row within \
                                 seconds of accepting it: another client probably uses client id {:?} (a \
                                 second station with the same station.name, or a tool). Not fighting over \
                                 it: reconnecting ever more slowly (up to {:?}). Give every client its own \
                                 id, and bind ids to credentials with the broker's ACLs (README, MQTT)",
                                config.client_id,
                                config.reconnect_max
                            );
                        }
                    }
                    Some(_) => {
                        short_sessions = 0;
                        backoff = config.reconnect_min;
                    }
                    None => {}
                }
            }
            match end {
                End::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
                End::Reconfigure => {
                    log::info!("MQTT settings changed: reconnecting");
                    config = self.settings.borrow_and_update().clone();
                    backoff = config.reconnect_min;
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
                            Some(Control::Reply(_)) => log::warn!("a command's reply is dropped: not connected"),
                            None => return,
                        },
                        Ok(()) = self.settings.changed() => {
                            config = self.settings.borrow_and_update().clone();
                        }
                    }
                    backoff = (backoff * 2).min(config.reconnect_max);
                }
            }
        }
    }

    async fn session(
        &mut self,
        config: &mut Mqtt,
        delivery: &mut Delivery,
        control: &mut mpsc::Receiver<Control>,
        connected_at: &mut Option<tokio::time::Instant>,
    ) -> End {
        let topics = Topics::new(&config.prefix, &self.station);
        let opts = match options(config, &topics) {
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
        let mut conn = Connection {
            client: &client,
            events: &mut erx,
            delivery,
            topics: &topics,
            max_packet: config.max_packet_bytes,
            homeassistant: None,
            station: self.station.clone(),
        };
        let end = self.connected(&mut conn, config, control, connected_at).await;
        self.stats.mqtt_connected.store(false, Ordering::Relaxed);
        poller.abort();
        end
    }

    async fn connected(
        &mut self,
        conn: &mut Connection<'_>,
        config: &mut Mqtt,
        control: &mut mpsc::Receiver<Control>,
        connected_at: &mut Option<tokio::time::Instant>,
    ) -> End {
        // Wait for the broker to accept us.
        loop {
            tokio::select! {
                ev = conn.events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(e),
                    None => return End::Lost("event loop ended".into()),
                },
                c = control.recv() => match c {
                    Some(Control::Shutdown(done)) => return End::Shutdown(done),
                    Some(Control::Reply(_)) => log::warn!("a command's reply is dropped: not connected yet"),
                    None => return End::Lost("control channel closed".into()),
                },
                Ok(()) = self.settings.changed() => {
                    if self.settings.borrow().clone() != *config {
                        return End::Reconfigure;
                    }
                }
            }
        }
        *connected_at = Some(tokio::time::Instant::now());
        conn.delivery.reset();
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.mqtt_connected.store(true, Ordering::Relaxed);
        log::info!("MQTT connected; publishing under {}", conn.topics.base());
        if let Err(e) = conn
            .publish(&conn.topics.status(), QoS::AtLeastOnce, true, b"online".to_vec())
            .await
        {
            return End::Lost(e);
        }
        if let Err(e) = conn.discovery(config.homeassistant.clone()).await {
            return End::Lost(e);
        }
        if self.commands.is_some() {
            if let Err(e) = conn.client.subscribe(conn.topics.cmd(), QoS::AtLeastOnce).await {
                return End::Lost(e.to_string());
            }
            log::info!("commands: listening on {}", conn.topics.cmd());
        }
        let state = self.state.borrow_and_update().clone();
        if !state.is_empty() {
            if let Err(e) = conn
                .publish(&conn.topics.state(), QoS::AtLeastOnce, true, state)
                .await
            {
                return End::Lost(e);
            }
        }
        let mut stats_tick = ticker(config.stats_interval);
        loop {
            if let Err(e) = self.fill(conn).await {
                return End::Lost(e);
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                ev = conn.events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev, conn.delivery, conn.topics),
                    Some(Err(e)) => return End::Lost(e),
                    None => return End::Lost("event loop ended".into()),
                },
                Ok(()) = self.state.changed() => {
                    let state = self.state.borrow_and_update().clone();
                    if let Err(e) = conn.publish(&conn.topics.state(), QoS::AtLeastOnce, true, state).await {
                        return End::Lost(e);
                    }
                }
                _ = stats_tick.tick() => {
                    let snap = self.stats.snapshot(&self.station).to_string().into_bytes();
                    if let Err(e) = conn.publish(&conn.topics.stats(), QoS::AtMostOnce, false, snap).await {
                        return End::Lost(e);
                    }
                }
                c = control.recv() => match c {
                    Some(Control::Shutdown(done)) => {
                        self.flush(conn).await;
                        return End::Shutdown(done);
                    }
                    Some(Control::Reply(reply)) => {
                        if let Err(e) = conn.publish(&conn.topics.cmd_reply(), QoS::AtLeastOnce, false, reply).await {
                            return End::Lost(e);
                        }
                    }
                    None => return End::Lost("control channel closed".into()),
                },
                Ok(()) = self.settings.changed() => {
                    let new = self.settings.borrow().clone();
                    if new.connection_differs(config) || new.prefix != config.prefix {
                        if new.prefix != config.prefix {
                            // Nothing will say "online" there any more.
                            log::info!("MQTT prefix changed: {} is marked offline", conn.topics.status());
                            let _ = conn.publish(&conn.topics.status(), QoS::AtLeastOnce, true, b"offline".to_vec()).await;
                        }
                        conn.disconnect().await;
                        return End::Reconfigure;
                    }
                    if new.stats_interval != config.stats_interval {
                        stats_tick = ticker(new.stats_interval);
                    }
                    if new.homeassistant != config.homeassistant {
                        if let Err(e) = conn.discovery(new.homeassistant.clone()).await {
                            return End::Lost(e);
                        }
                    }
                    *config = new;
                }
            }
        }
    }

    /// Publish pending entries in order, up to the window. An entry that
    /// cannot be read is moved to the outbox's quarantine and skipped.
    async fn fill(&self, conn: &mut Connection<'_>) -> Result<(), String> {
        while conn.delivery.has_room() {
            let (seq, read) = {
                let ob = self
                    .outbox
                    .lock()
                    .map_err(|_| "outbox lock poisoned".to_string())?;
                let Some(seq) = ob.index().after(conn.delivery.sent_up_to()).next() else {
                    return Ok(());
                };
                (seq, ob.read(seq))
            };
            let read = read.and_then(|e| match e {
                Some(e) => Ok(Some((message(&e, conn.topics)?, e))),
                None => Ok(None),
            });
            let (json, entry) = match read {
                Ok(Some(ready)) => ready,
                Ok(None) => {
                    conn.delivery.skip(seq);
                    continue;
                }
                Err(e) => {
                    self.quarantine(seq, &e.to_string());
                    conn.delivery.skip(seq);
                    continue;
                }
            };
            // An entry that can never be sent must not block the ones behind
            // it: a heatmap over the packet limit goes (the result says so), a
            // result over it (never seen: they are ~1 KB) is quarantined.
            let heatmap_topic = conn.topics.heatmap(&entry.id);
            if entry
                .heatmap
                .as_ref()
                .is_some_and(|h| packet_size(&heatmap_topic, h.len()) > conn.max_packet)
            {
                if !self.drop_heatmap(seq, conn.max_packet) {
                    self.quarantine(
                        seq,
                        "its heatmap does not fit mqtt.max_packet_bytes and cannot be dropped",
                    );
                    conn.delivery.skip(seq);
                }
                continue; // read again, without it
            }
            if packet_size(&conn.topics.result(), json.len()) > conn.max_packet {
                self.quarantine(
                    seq,
                    &format!("{} bytes, more than mqtt.max_packet_bytes", json.len()),
                );
                conn.delivery.skip(seq);
                continue;
            }
            let parts = 1 + usize::from(entry.heatmap.is_some());
            conn.delivery.send(seq, parts);
            conn.request(&conn.topics.result(), QoS::AtLeastOnce, false, json)
                .await?;
            let latest = conn.homeassistant.is_some().then(|| {
                let result = serde_json::from_slice(&entry.json).unwrap_or_default();
                (super::homeassistant::latest(&result), entry.heatmap.clone())
            });
            if let Some(jpg) = entry.heatmap {
                conn.request(&heatmap_topic, QoS::AtLeastOnce, false, jpg).await?;
            }
            // Home Assistant reads the newest result from fixed, retained topics.
            if let Some((short, heatmap)) = latest {
                conn.publish(&conn.topics.latest(), QoS::AtLeastOnce, true, short)
                    .await?;
                if let Some(jpg) = heatmap {
                    let topic = conn.topics.heatmap_latest();
                    conn.publish(&topic, QoS::AtLeastOnce, true, jpg).await?;
                }
            }
        }
        Ok(())
    }

    /// Drop the heatmap of `seq`, too large to publish; false when that failed.
    fn drop_heatmap(&self, seq: u64, limit: usize) -> bool {
        log::warn!(
            "the heatmap of result #{seq} does not fit mqtt.max_packet_bytes = {limit}: \
             the result is published without it (heatmap_dropped)"
        );
        let Ok(mut ob) = self.outbox.lock() else {
            return false;
        };
        let dropped = match ob.drop_heatmap(seq) {
            Ok(d) => d,
            Err(e) => {
                log::error!("outbox: cannot delete the heatmap of #{seq}: {e}");
                true // forgotten by the index all the same
            }
        };
        self.stats
            .heatmaps_dropped
            .store(ob.dropped_heatmaps(), Ordering::Relaxed);
        dropped
    }

    fn quarantine(&self, seq: u64, why: &str) {
        log::error!(
            "outbox entry #{seq} is unreadable ({why}): moved to the outbox's quarantine, not published"
        );
        if let Ok(mut ob) = self.outbox.lock() {
            ob.quarantine(seq);
            self.stats
                .outbox_pending
                .store(ob.index().len(), Ordering::Relaxed);
            self.stats
                .outbox_quarantined
                .store(ob.quarantined(), Ordering::Relaxed);
        }
    }

    fn on_event(&self, ev: Event, delivery: &mut Delivery, topics: &Topics) {
        match ev {
            Event::Incoming(Packet::Publish(p)) if p.topic == topics.cmd() => match &self.commands {
                Some(tx) => {
                    let incoming = super::commands::Incoming {
                        payload: p.payload.to_vec(),
                        reply: None,
                    };
                    if tx.try_send(incoming).is_err() {
                        log::warn!("commands: one dropped, they arrive faster than they are carried out");
                    }
                }
                None => log::warn!("commands: one arrived on {} but [commands] is off", p.topic),
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => delivery.on_outgoing(pkid),
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = delivery.on_ack(ack.pkid) {
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
            _ => {}
        }
    }

    /// Deliver what is pending (bounded by [`FLUSH_TIMEOUT`]), publish `offline`, disconnect.
    async fn flush(&self, conn: &mut Connection<'_>) {
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        loop {
            if self.fill(conn).await.is_err() {
                return;
            }
            // `fill` stops only when the window is full or nothing is left.
            if conn.delivery.idle() {
                break;
            }
            tokio::select! {
                ev = conn.events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev, conn.delivery, conn.topics),
                    _ => return,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    log::warn!("shutdown: results still pending stay in the outbox for the next start");
                    break;
                }
            }
        }
        let _ = conn
            .publish(&conn.topics.status(), QoS::AtLeastOnce, true, b"offline".to_vec())
            .await;
        conn.disconnect().await;
    }
}

/// The result JSON as published: `heatmap.topic` names the topic the
/// heatmap goes to now; a result whose heatmap is gone says so.
fn message(entry: &Entry, topics: &Topics) -> std::io::Result<Vec<u8>> {
    let mut json: serde_json::Value = serde_json::from_slice(&entry.json)?;
    if json.get("heatmap").is_some_and(|h| h.is_object()) {
        if entry.heatmap.is_some() {
            json["heatmap"]["topic"] = topics.heatmap(&entry.id).into();
        } else {
            json["heatmap"] = serde_json::Value::Null;
            json["heatmap_dropped"] = true.into();
        }
    }
    Ok(serde_json::to_vec(&json)?)
}

/// The JSON `entry` is published as under `prefix` for `station`.
pub fn published(entry: &Entry, prefix: &str, station: &str) -> std::io::Result<Vec<u8>> {
    message(entry, &Topics::new(prefix, station))
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// One connection: the client, its events and what is in flight on it.
struct Connection<'a> {
    client: &'a AsyncClient,
    events: &'a mut mpsc::UnboundedReceiver<Result<Event, String>>,
    delivery: &'a mut Delivery,
    topics: &'a Topics,
    /// The largest packet the client may send.
    max_packet: usize,
    /// Home Assistant's discovery prefix, while discovery is on.
    homeassistant: Option<String>,
    /// The station's name.
    station: String,
}

/// The size of an MQTT 3.1.1 publish packet: fixed header (1 byte and up to
/// 4 of length), topic (2 + its bytes), packet id (2), payload.
fn packet_size(topic: &str, payload: usize) -> usize {
    1 + 4 + 2 + topic.len() + 2 + payload
}

impl Connection<'_> {
    /// Publish something that is no outbox entry.
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        self.delivery.send_other();
        self.request(topic, qos, retain, payload).await
    }

    /// Home Assistant discovery becomes `wanted`: publish its configurations
    /// (retained), or remove those published under the previous prefix
    /// (empty retained messages), with the retained state they read.
    async fn discovery(&mut self, wanted: Option<String>) -> Result<(), String> {
        let station = self.station.clone();
        let station = station.as_str();
        if let Some(old) = self.homeassistant.take() {
            if wanted.as_ref() == Some(&old) {
                self.homeassistant = Some(old);
                return Ok(());
            }
            log::info!("Home Assistant discovery under {old}/: removing the station's entities");
            for topic in super::homeassistant::config_topics(&old, self.topics, station) {
                self.publish(&topic, QoS::AtLeastOnce, true, Vec::new()).await?;
            }
            if wanted.is_none() {
                for topic in [self.topics.latest(), self.topics.heatmap_latest()] {
                    self.publish(&topic, QoS::AtLeastOnce, true, Vec::new()).await?;
                }
            }
        }
        if let Some(prefix) = &wanted {
            log::info!(
                "Home Assistant discovery under {prefix}/: device {}",
                super::homeassistant::node_id(station)
            );
            for (topic, config) in super::homeassistant::configs(prefix, self.topics, station) {
                self.publish(&topic, QoS::AtLeastOnce, true, config).await?;
            }
        }
        self.homeassistant = wanted;
        Ok(())
    }

    /// Hand a publish to the client (its tag is already with [`Delivery`]).
    async fn request(&self, topic: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|e| e.to_string())
    }

    /// Disconnect, letting the event loop write the last packets first.
    async fn disconnect(&mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.events.recv().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str, heatmap: Option<&[u8]>) -> Entry {
        Entry {
            seq: 1,
            id: "abc".into(),
            json: json.as_bytes().to_vec(),
            heatmap: heatmap.map(<[u8]>::to_vec),
        }
    }

    fn published(e: &Entry, prefix: &str) -> serde_json::Value {
        serde_json::from_slice(&message(e, &Topics::new(prefix, "st")).unwrap()).unwrap()
    }

    #[test]
    fn a_result_names_the_heatmap_topic_of_the_prefix_it_is_published_under() {
        let e = entry(
            r#"{"id":"abc","heatmap":{"bytes":3,"width":2,"height":2}}"#,
            Some(b"jpg"),
        );
        assert_eq!(
            published(&e, "winclip")["heatmap"]["topic"],
            "winclip/st/heatmap/abc"
        );
        // The prefix changed while the result waited in the outbox.
        let j = published(&e, "plant");
        assert_eq!(j["heatmap"]["topic"], "plant/st/heatmap/abc");
        assert_eq!(j["heatmap"]["bytes"], 3);
    }

    #[test]
    fn a_result_whose_heatmap_was_dropped_says_so_and_announces_no_topic() {
        let e = entry(r#"{"id":"abc","heatmap":{"bytes":3,"width":2,"height":2}}"#, None);
        let j = published(&e, "winclip");
        assert!(j["heatmap"].is_null());
        assert_eq!(j["heatmap_dropped"], true);
        let plain = entry(r#"{"id":"abc","heatmap":null}"#, None);
        assert!(published(&plain, "winclip").get("heatmap_dropped").is_none());
        assert!(message(&entry("{oops", None), &Topics::new("w", "st")).is_err());
    }
}
