//! The HTTP endpoint (`[http]`, issue #18): `/metrics` read by Prometheus'
//! own client library (its strict OpenMetrics parser), `/api/`, and what it
//! refuses. Plain HTTP/1.1 over a socket: nothing between the test and the
//! server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::station::{fixture, Station, COMMANDS_ON};
use crate::util::{bin, retained, text, wait_for, Mosquitto, Subscriber};

/// A response: status, the header block (lower-cased), the body.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
    pub bytes: Vec<u8>,
}

/// Send `request` as is; `None` when the server closed the connection without an answer.
pub fn send(port: u16, request: &[u8]) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(request).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let bytes = raw[split + 4..].to_vec();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Response {
        status,
        head: head.to_ascii_lowercase(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
    })
}

/// Wait (up to 60 s) until the endpoint answers `GET /api/state` with 200.
pub fn serving(port: u16, headers: &str) -> Response {
    wait_for(60, "the HTTP endpoint", || {
        get(port, "/api/state", headers).filter(|r| r.status == 200)
    })
}

/// Every one of `paths` is answered 404 or 400, with nothing from the disk.
fn serves_nothing_from_disk(port: u16, auth: &str, paths: &[&str]) {
    for path in paths {
        let r = get(port, path, auth).unwrap();
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(
            !r.body.contains("root:") && !r.body.contains("[station]"),
            "{path}: {}",
            r.body
        );
    }
}

pub fn get(port: u16, path: &str, headers: &str) -> Option<Response> {
    send(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n").as_bytes(),
    )
}

/// The Python that has `prometheus_client` and `jsonschema` (tests/run makes
/// one in target/pyclients).
fn python() -> String {
    let py = std::env::var("WINCLIP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client, jsonschema"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} has no prometheus_client or jsonschema: tests/run installs them in target/pyclients; \
         or `pip install prometheus_client jsonschema` and set WINCLIP_TEST_PYTHON to that python"
    );
    py
}

/// Parse OpenMetrics text with prometheus_client's parser (it raises on any
/// violation of the format); every sample as `[name, labels, value]`.
fn parse_openmetrics(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        out = [[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the OpenMetrics parser refused:\n{}\n{text}",
        text_of(&o)
    );
    let v: Vec<(String, serde_json::Value, f64)> = serde_json::from_slice(&o.stdout).unwrap();
    v
}

fn text_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sample(samples: &[(String, serde_json::Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|s| s.2)
}

fn has_security_headers(r: &Response) -> bool {
    r.head.contains("x-frame-options: deny")
        && r.head.contains("frame-ancestors 'none'")
        && r.head.contains("x-content-type-options: nosniff")
}

#[test]
fn metrics_parse_with_prometheus_own_parser_and_count_what_the_station_did() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = Subscriber::start(dir.path(), broker.port, "winclip/#");
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    st.start();
    let port = st.http_port;
    let state = serving(port, "");
    assert!(has_security_headers(&state), "{}", state.head);
    st.drop_file(&fixture("queries/good.png"), "a.png");
    st.drop_file(&fixture("queries/hole.png"), "b.png");
    wait_for(120, "two results", || (sub.results().len() >= 2).then_some(()));

    let r = get(port, "/metrics", "").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("content-type: application/openmetrics-text"),
        "{}",
        r.head
    );
    assert!(has_security_headers(&r), "{}", r.head);
    let samples = parse_openmetrics(&r.body);
    let verdicts: f64 = ["pass", "fail"]
        .iter()
        .filter_map(|v| {
            sample(
                &samples,
                "winclip_inspections_total",
                &[("source", "cam"), ("verdict", v)],
            )
        })
        .sum();
    assert_eq!(verdicts, 2.0, "{}", r.body);
    for name in [
        "winclip_inspection_duration_seconds_count",
        "winclip_end_to_end_latency_seconds_count",
    ] {
        assert_eq!(
            sample(&samples, name, &[("source", "cam")]),
            Some(2.0),
            "{name}: {}",
            r.body
        );
    }
    let wait_published = wait_for(60, "the results acknowledged", || {
        let s = parse_openmetrics(&get(port, "/metrics", "")?.body);
        (sample(&s, "winclip_results_published_total", &[]) == Some(2.0)).then_some(s)
    });
    assert_eq!(sample(&wait_published, "winclip_mqtt_connected", &[]), Some(1.0));
    assert_eq!(sample(&wait_published, "winclip_outbox_pending", &[]), Some(0.0));
    assert_eq!(sample(&wait_published, "winclip_threshold", &[]), Some(0.3));
    let result = &sub.results()[0];
    let model = result["model"].as_str().unwrap();
    assert_eq!(
        sample(
            &wait_published,
            "winclip_build_info",
            &[("model", model), ("device", "cpu"), ("precision", "f32")]
        ),
        Some(1.0),
        "{}",
        r.body
    );

    let state: serde_json::Value = serde_json::from_str(&get(port, "/api/state", "").unwrap().body).unwrap();
    assert_eq!(state["model"], result["model"]);
    assert_eq!(state["bank"], result["bank"]);
    assert_eq!(
        (state["paused"].as_bool(), state["mqtt_connected"].as_bool()),
        (Some(false), Some(true))
    );
    let stats: serde_json::Value = serde_json::from_str(&get(port, "/api/stats", "").unwrap().body).unwrap();
    assert_eq!(stats["inspected"], 2);
    assert_eq!(stats["http"], "ok");
    assert!(st.terminate().success());
}

#[test]
fn the_endpoint_refuses_strangers_paths_and_floods_and_a_busy_port_costs_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    let config = std::fs::read_to_string(&st.config).unwrap();
    let listen = format!("listen = \"127.0.0.1:{}\"", st.http_port);
    let check = |text: &str| {
        std::fs::write(&st.config, text).unwrap();
        bin()
            .args(["check-config", "--config"])
            .arg(&st.config)
            .output()
            .unwrap()
    };
    // Beyond loopback without a token: refused before anything starts.
    let o = check(&config.replace(&listen, &format!("listen = \"0.0.0.0:{}\"", st.http_port)));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("http.token_file"), "{}", text(&o));

    let with_token = st.with_token(&config, "s3cret-token");
    assert!(check(&with_token).status.success());
    st.start();
    let port = st.http_port;
    let denied = wait_for(60, "the HTTP endpoint", || get(port, "/metrics", ""));
    assert_eq!(denied.status, 401, "{}", denied.body);
    assert!(
        denied.head.contains("www-authenticate: bearer"),
        "{}",
        denied.head
    );
    assert!(has_security_headers(&denied), "{}", denied.head);
    assert!(!denied.body.contains("winclip_"), "{}", denied.body);
    // The page's own code loads without the token (it carries no data); what it reads does not.
    assert_eq!(get(port, "/", "").unwrap().status, 200);
    assert_eq!(get(port, "/app.js", "").unwrap().status, 200);
    for path in [
        "/api/results",
        "/api/events",
        "/api/state",
        "/api/results/x/heatmap.jpg",
    ] {
        assert_eq!(get(port, path, "").unwrap().status, 401, "{path}");
    }
    assert_eq!(
        get(port, "/metrics", "Authorization: Bearer s3cret-token2\r\n")
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        get(port, "/metrics", "Authorization: Basic czNjcmV0\r\n")
            .unwrap()
            .status,
        401
    );
    let auth = "Authorization: Bearer s3cret-token\r\n";
    assert_eq!(get(port, "/metrics", auth).unwrap().status, 200);

    serves_nothing_from_disk(
        port,
        auth,
        &[
            "/../../../../etc/passwd",
            "/api/..%2f..%2f..%2fetc%2fpasswd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/api/state/../../config.toml",
        ],
    );
    let r = send(
        port,
        format!(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: 3\r\n\r\nabc"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 413, "nothing takes a body: {}", r.body);
    // Control requests: nothing to control while commands are off, and never
    // anything without the token.
    let control = |headers: &str| {
        send(
            port,
            format!("POST /api/threshold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n")
                .as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(control("").status, 401);
    assert_eq!(control(auth).status, 405);
    let huge_body = format!(
        "GET /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{}",
        4 << 20,
        "x".repeat(4 << 20)
    );
    if let Some(r) = send(port, huge_body.as_bytes()) {
        assert_eq!(r.status, 413);
    }
    serves_nothing_from_disk(
        port,
        auth,
        &[
            "/api/results/..%2f..%2fconfig.toml",
            "/api/results/..%2F..%2F..%2Fetc%2Fpasswd/image.jpg",
            "/api/results/%2e%2e/heatmap.jpg",
            "/api/results/../../history/000000000001.json",
        ],
    );
    // The page's event stream and pictures take the token in the query.
    assert_eq!(
        get(port, "/api/results?token=s3cret-token", "").unwrap().status,
        200
    );
    assert_eq!(get(port, "/api/results?token=wrong", "").unwrap().status, 401);
    // Percent-encoded as the page's encodeURIComponent may send it.
    assert_eq!(
        get(port, "/api/results?limit=5&token=s3cret%2Dtoken", "")
            .unwrap()
            .status,
        200
    );
    // A megabyte of header: answered with an error or the connection closed,
    // and the endpoint serves the next request as before.
    let flood = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Flood: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    if let Some(r) = send(port, flood.as_bytes()) {
        assert!(r.status >= 400, "{}", r.status);
    }
    assert_eq!(get(port, "/api/stats", auth).unwrap().status, 200);
    assert!(!st.log().contains("s3cret-token"), "the token is never logged");
    assert!(st.terminate().success());

    // The port is taken: the station inspects on, and says so.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::fs::write(&st.config, &config).unwrap();
    let sub = Subscriber::start(&dir.path().join("sub"), broker.port, "winclip/#");
    st.start();
    st.drop_file(&fixture("queries/good.png"), "c.png");
    wait_for(120, "a result without the endpoint", || {
        (!sub.results().is_empty()).then_some(())
    });
    assert!(
        st.log().contains("http: cannot listen on 127.0.0.1"),
        "{}",
        st.log()
    );
    let stats = wait_for(60, "stats", || {
        sub.messages()
            .iter()
            .rev()
            .find(|m| m.topic.ends_with("/stats"))
            .map(|m| m.json())
    });
    assert!(
        stats["http"].as_str().unwrap().contains("cannot listen"),
        "{stats}"
    );
    drop(squatter);
    assert!(st.terminate().success());
}

/// Read server-sent events from `stream` until `n` of kind `event` came; their data.
fn read_events(stream: &mut TcpStream, event: &str, n: usize) -> Vec<serde_json::Value> {
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let found: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|block| {
                let mut kind = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                        kind = Some(k.trim().to_string());
                    } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                        data.push_str(d);
                    }
                }
                (kind.as_deref() == Some(event)).then(|| serde_json::from_str(&data).unwrap())
            })
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} {event} events did not come: {text}"
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("the event stream ended: {text}"),
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }
}

fn json_of(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[test]
fn the_page_and_the_results_api_show_what_the_station_kept_live_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = Station::new(dir.path(), None, "");
    st.set_threshold(0.29);
    st.start();
    let port = st.http_port;
    serving(port, "");

    let page = get(port, "/", "").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"), "{}", page.head);
    assert!(
        page.body.contains("app.js") && page.body.contains("app.css"),
        "{}",
        page.body
    );
    assert!(page.head.contains("script-src 'self'"), "{}", page.head);
    assert!(has_security_headers(&page), "{}", page.head);
    for (path, kind) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let r = get(port, path, "").unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.head.contains(&format!("content-type: {kind}")),
            "{path}: {}",
            r.head
        );
    }
    assert_eq!(
        json_of(&get(port, "/api/results", "").unwrap())["results"],
        serde_json::json!([])
    );

    // Live: the event stream sends each result as it is stored.
    let mut events = TcpStream::connect(("127.0.0.1", port)).unwrap();
    events.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    events
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    st.drop_file(&fixture("queries/good.png"), "good.png");
    st.drop_file(&fixture("queries/hole.png"), "hole.png");
    let live = read_events(&mut events, "result", 2);
    let verdicts: Vec<_> = live.iter().map(|r| r["verdict"].as_str().unwrap()).collect();
    assert_eq!(
        verdicts,
        ["pass", "fail"],
        "threshold 0.29 separates the two fixtures"
    );

    let list = json_of(&get(port, "/api/results?limit=10", "").unwrap());
    let ids: Vec<_> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [live[1]["id"].clone(), live[0]["id"].clone()],
        "newest first"
    );
    let fails = json_of(&get(port, "/api/results?verdict=fail", "").unwrap());
    assert_eq!(fails["results"].as_array().unwrap().len(), 1);
    assert_eq!(fails["results"][0]["verdict"], "fail");
    assert_eq!(get(port, "/api/results?verdict=maybe", "").unwrap().status, 400);
    assert_eq!(
        json_of(&get(port, "/api/results?limit=1", "").unwrap())["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let failed = &live[1];
    let id = failed["id"].as_str().unwrap();
    let one = json_of(&get(port, &format!("/api/results/{id}"), "").unwrap());
    assert_eq!(one["score"], failed["score"]);
    assert_eq!(one["links"]["heatmap"], format!("/api/results/{id}/heatmap.jpg"));
    let heat = get(port, &format!("/api/results/{id}/heatmap.jpg"), "").unwrap();
    assert_eq!(heat.status, 200);
    assert!(heat.head.contains("content-type: image/jpeg"), "{}", heat.head);
    assert!(heat.bytes.starts_with(&[0xFF, 0xD8]), "a JPEG");
    assert_eq!(
        heat.bytes.len() as u64,
        failed["heatmap"]["bytes"].as_u64().unwrap()
    );
    // The picture was a PNG: served as JPEG, the size it was.
    let pic = get(port, &format!("/api/results/{id}/image.jpg"), "").unwrap();
    assert_eq!(pic.status, 200);
    let decoded = image::load_from_memory_with_format(&pic.bytes, image::ImageFormat::Jpeg).unwrap();
    let original = image::open(fixture("queries/hole.png")).unwrap();
    assert_eq!(
        (decoded.width(), decoded.height()),
        (original.width(), original.height())
    );
    assert_eq!(
        get(port, "/api/results/0123abcd/heatmap.jpg", "").unwrap().status,
        404
    );
    let state = json_of(&get(port, "/api/state", "").unwrap());
    assert_eq!(state["history"], 2);
    assert!(st.terminate().success());

    // Kept across a restart.
    st.start();
    let after = wait_for(60, "the endpoint again", || {
        get(port, "/api/results", "").filter(|r| r.status == 200)
    });
    let ids_after: Vec<_> = json_of(&after)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids_after, ids);
    assert!(
        get(port, &format!("/api/results/{id}/heatmap.jpg"), "")
            .unwrap()
            .bytes
            == heat.bytes
    );
    // A stopping station ends its event streams (they do not hold the stop up).
    let mut events = TcpStream::connect(("127.0.0.1", port)).unwrap();
    events
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(st.terminate().success());
}

/// Check each discovery configuration against what Home Assistant documents
/// (tests/fixtures/homeassistant/discovery.schema.json), with jsonschema.
fn validate_discovery(configs: &[(String, serde_json::Value)]) {
    let script = "import sys, json, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        defs = schema['$defs']\n\
        bad = []\n\
        for component, config in json.load(sys.stdin):\n\
        \x20   s = dict(defs[component])\n\
        \x20   s['properties'] = {**defs['common'], **s['properties']}\n\
        \x20   s['additionalProperties'] = False\n\
        \x20   s['$defs'] = defs\n\
        \x20   for e in jsonschema.Draft202012Validator(s).iter_errors(config):\n\
        \x20       bad.append(f'{component} {config.get(\"unique_id\")}: {e.message}')\n\
        print('\\n'.join(bad))\n\
        sys.exit(1 if bad else 0)\n";
    let input: Vec<(String, serde_json::Value)> = configs
        .iter()
        .map(|(topic, c)| (topic.split('/').nth(1).unwrap().to_string(), c.clone()))
        .collect();
    let mut child = Command::new(python())
        .args(["-c", script])
        .arg(crate::util::root().join("tests/fixtures/homeassistant/discovery.schema.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "discovery configurations refused:\n{}",
        text_of(&o)
    );
}

#[test]
fn home_assistant_discovery_validates_follows_the_station_and_is_removed_when_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    st.set_threshold(0.29);
    let plain = std::fs::read_to_string(&st.config).unwrap();
    let on = plain.replace(
        "stats_interval_secs = 1\n",
        "stats_interval_secs = 1\nhomeassistant = true\n",
    );
    assert_ne!(on, plain);
    std::fs::write(&st.config, &on).unwrap();
    st.start();
    let configs = wait_for(60, "the discovery configurations", || {
        let c = retained(broker.port, "homeassistant/+/+/+/config");
        (c.len() >= 8).then_some(c)
    });
    let configs: Vec<(String, serde_json::Value)> = configs
        .into_iter()
        .map(|m| (m.topic, serde_json::from_slice(&m.payload).unwrap()))
        .collect();
    validate_discovery(&configs);
    let by_object = |object: &str| {
        configs
            .iter()
            .find(|(t, _)| t.ends_with(&format!("/{object}/config")))
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("no {object}: {configs:?}"))
    };
    let station = crate::station::STATION;
    let defect = by_object("defect");
    assert_eq!(defect["device_class"], "problem");
    assert_eq!(defect["availability_topic"], format!("winclip/{station}/status"));
    let image = by_object("heatmap");
    let image_topic = image["image_topic"].as_str().unwrap().to_string();
    assert_eq!(image_topic, format!("winclip/{station}/heatmap/latest"));
    let devices: std::collections::BTreeSet<String> = configs
        .iter()
        .map(|(_, c)| c["device"]["identifiers"][0].to_string())
        .collect();
    assert_eq!(devices.len(), 1, "one device per station");

    // A defective part: the entities' topics follow it, retained.
    st.drop_file(&fixture("queries/hole.png"), "hole.png");
    let latest = wait_for(120, "the retained latest result", || {
        retained(broker.port, defect["state_topic"].as_str().unwrap()).pop()
    });
    let latest: serde_json::Value = serde_json::from_slice(&latest.payload).unwrap();
    assert_eq!(latest["verdict"], "fail");
    assert!(latest["score"].as_f64().unwrap() > latest["threshold"].as_f64().unwrap());
    let heatmap = retained(broker.port, &image_topic)
        .pop()
        .expect("a retained heatmap");
    assert!(heatmap.payload.starts_with(&[0xFF, 0xD8]));
    let status = retained(broker.port, defect["availability_topic"].as_str().unwrap())
        .pop()
        .unwrap();
    assert_eq!(
        status.payload,
        defect["payload_available"].as_str().unwrap().as_bytes()
    );

    // Off, live: the entities (and the retained state they read) are removed.
    let log = st.reload(&plain);
    assert!(log.contains("mqtt.homeassistant"), "{log}");
    wait_for(30, "the discovery configurations to go", || {
        retained(broker.port, "homeassistant/#").is_empty().then_some(())
    });
    assert!(retained(broker.port, &image_topic).is_empty());
    assert!(
        !retained(broker.port, &format!("winclip/{station}/status")).is_empty(),
        "the station's own status stays"
    );
    assert!(st.terminate().success());
}

/// `q` URL-encoded for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_server_scrapes_the_station() {
    let Some(prometheus) = crate::util::optional_peer("prometheus", "WINCLIP_TEST_PROMETHEUS", "prometheus")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut st = Station::new(dir.path(), None, "");
    st.set_threshold(0.29);
    st.start();
    let port = st.http_port;
    serving(port, "");
    st.drop_file(&fixture("queries/good.png"), "good.png");
    st.drop_file(&fixture("queries/hole.png"), "hole.png");
    wait_for(120, "two results", || {
        get(port, "/api/results", "").filter(|r| r.body.matches("\"verdict\"").count() == 2)
    });

    // A real server scraping it every second (OpenMetrics, which it asks for
    // first; promtool's `check metrics` reads only the older text format).
    let prom_port = crate::util::free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: winclip\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let mut server = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<Vec<serde_json::Value>> {
        let r = get(prom_port, &format!("/api/v1/query?query={}", encode(q)), "")?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"].as_array().cloned()
    };
    let value = |s: &serde_json::Value| s["value"][1].as_str().unwrap_or_default().to_string();
    let up = wait_for(60, "Prometheus to scrape the station", || {
        query("up{job=\"winclip\"}").filter(|r| r.first().is_some_and(|s| value(s) == "1"))
    });
    assert_eq!(up.len(), 1);
    let inspections = wait_for(30, "the inspection counters in Prometheus", || {
        query("winclip_inspections_total").filter(|r| r.len() == 2)
    });
    for verdict in ["pass", "fail"] {
        let s = inspections
            .iter()
            .find(|s| s["metric"]["verdict"] == verdict)
            .unwrap_or_else(|| panic!("no {verdict}: {inspections:?}"));
        assert_eq!(s["metric"]["source"], "cam");
        assert_eq!(value(s), "1", "{s}");
    }
    let latency = query("winclip_end_to_end_latency_seconds_count").unwrap();
    assert_eq!(latency.first().map(value).as_deref(), Some("2"), "{latency:?}");
    let p99 = query("histogram_quantile(0.99, winclip_inspection_duration_seconds_bucket)").unwrap();
    let p99: f64 = value(&p99[0]).parse().unwrap();
    assert!(p99 > 0.0 && p99.is_finite(), "{p99}");
    let _ = server.kill();
    let _ = server.wait();
    assert!(st.terminate().success());
}

#[test]
fn control_from_http_needs_commands_on_and_a_token_and_goes_the_command_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = Station::new(dir.path(), None, "");
    let plain = std::fs::read_to_string(&st.config).unwrap();
    let with_token = st.with_token(&plain, "ctl-token");
    let on = COMMANDS_ON;
    let port = st.http_port;
    let auth = "Authorization: Bearer ctl-token\r\n";
    let post = |headers: &str, body: &str| {
        send(
            port,
            format!(
                "POST /api/commands HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let threshold = r#"{"command": "threshold", "value": 0.29, "request_id": "h1"}"#;

    // A token but commands off: refused, saying why.
    std::fs::write(&st.config, &with_token).unwrap();
    st.start();
    serving(port, auth);
    let r = post(auth, threshold);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("commands are off"), "{}", r.body);
    assert!(st.terminate().success());

    // Commands on but no token (loopback, readable by anyone here): no control.
    std::fs::write(&st.config, plain.clone() + on).unwrap();
    st.start();
    serving(port, auth);
    let r = post("", threshold);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("needs a token"), "{}", r.body);
    assert_eq!(json_of(&get(port, "/api/state", "").unwrap())["control"], false);
    assert!(st.terminate().success());

    // Both: authenticated commands are carried out, others refused.
    std::fs::write(&st.config, with_token + on).unwrap();
    st.start();
    serving(port, auth);
    assert_eq!(post("", threshold).status, 401);
    assert_eq!(post("Authorization: Bearer nope\r\n", threshold).status, 401);
    let r = post(auth, threshold);
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = json_of(&r);
    assert_eq!(
        (reply["request_id"].clone(), reply["ok"].clone()),
        (serde_json::json!("h1"), serde_json::json!(true))
    );
    assert_eq!(reply["state"]["threshold"], 0.29);
    let r = post(auth, "{oops");
    assert_eq!(r.status, 400);
    assert!(json_of(&r)["error"].as_str().unwrap().contains("not JSON"));
    let big = format!(r#"{{"command": "status", "request_id": "{}"}}"#, "x".repeat(5000));
    assert_eq!(post(auth, &big).status, 413);
    let state = json_of(&get(port, "/api/state", auth).unwrap());
    assert_eq!(
        (state["control"].clone(), state["threshold"].clone()),
        (serde_json::json!(true), serde_json::json!(0.29))
    );
    // Still read-only everywhere else.
    let r = send(
        port,
        format!(
            "POST /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 413);
    assert!(st.terminate().success());
}
