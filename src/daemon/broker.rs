//! The embedded MQTT broker (rumqttd) for a standalone station without a
//! broker of its own. Factory deployments configure `mqtt.host` instead.

use std::net::SocketAddr;

/// Start a broker listening on `listen` (MQTT 3.1.1) in a background thread.
/// `max_payload` bounds message sizes (heatmaps must fit). With `login`
/// (user, password) it admits only clients that give them.
pub fn start(listen: &str, max_payload: usize, login: Option<(String, String)>) -> anyhow::Result<()> {
    let addr: SocketAddr = listen.parse()?;
    // Fail early and clearly when the port is taken (rumqttd would only log it).
    drop(std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            ": another program listens there; set mqtt.host to use the broker already running \
             there, or change mqtt.embedded_listen"
        } else {
            ""
        };
        anyhow::anyhow!("embedded broker cannot listen on {addr}: {e}{hint}")
    })?);
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 256
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload}
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let mut config: rumqttd::Config = toml::from_str(&text)?;
    if let Some((user, password)) = login {
        for server in config.v4.iter_mut().flat_map(|v4| v4.values_mut()) {
            server.connections.auth = Some(std::collections::HashMap::from([(
                user.clone(),
                password.clone(),
            )]));
        }
    }
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                log::error!("embedded MQTT broker stopped: {e}");
            }
        })?;
    // Ready before the station's own client connects: no "connection
    // refused" in the log at every start.
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_millis(200)).is_err() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the embedded broker does not accept connections on {addr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    log::info!("embedded MQTT broker listening on {addr}");
    Ok(())
}
