//! The HTTP endpoint (`[http]`, issue #18): `/metrics` read by Prometheus'
//! own client library (its strict OpenMetrics parser), `/api/`, and what it
//! refuses. Plain HTTP/1.1 over a socket: nothing between the test and the
//! server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::station::{fixture, Station};
use crate::util::{bin, text, wait_for, Mosquitto, Subscriber};

/// A response: status, the header block (lower-cased), the body.
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// Send `request` as is; `None` when the server closed the connection without an answer.
fn send(port: u16, request: &[u8]) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(request).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Response {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

fn get(port: u16, path: &str, headers: &str) -> Option<Response> {
    send(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n").as_bytes(),
    )
}

/// The Python that has `prometheus_client` (tests/run makes one in target/pyclients).
fn python() -> String {
    let py = std::env::var("WINCLIP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} has no prometheus_client: tests/run installs it in target/pyclients; or \
         `pip install prometheus_client` and set WINCLIP_TEST_PYTHON to that python"
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
    let state = wait_for(60, "the HTTP endpoint", || {
        get(port, "/api/state", "").filter(|r| r.status == 200)
    });
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
            &[("model", model), ("device", "cpu")]
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

    let token = dir.path().join("http-token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let with_token = config.replace(
        &listen,
        &format!("{listen}\ntoken_file = \"{}\"", token.display()),
    );
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

    for path in [
        "/../../../../etc/passwd",
        "/api/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/state/../../config.toml",
    ] {
        let r = get(port, path, auth).unwrap();
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(
            !r.body.contains("root:") && !r.body.contains("[station]"),
            "{path}: {}",
            r.body
        );
    }
    let r = send(
        port,
        format!(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: 3\r\n\r\nabc"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 405);
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
