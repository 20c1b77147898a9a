//! The station's HTTP endpoint (`[http]`): read-only.
//!
//! - `GET /`: the page (plain HTML, CSS and JS compiled into the binary):
//!   the latest result large, the recent ones, counters and state, updated
//!   live from `/api/events`;
//! - `GET /metrics`: every number, OpenMetrics text ([`super::metrics`]);
//! - `GET /api/results?limit=&verdict=fail`, `/api/results/<id>`,
//!   `/api/results/<id>/heatmap.jpg`, `/api/results/<id>/image.jpg`: the
//!   recent results ([`History`]);
//! - `GET /api/events`: server-sent events, one `result` per new result;
//! - `GET /api/stats`: what `<prefix>/<station>/stats` publishes;
//! - `GET /api/state`: the running model, bank, threshold and device, the
//!   active recipe per source, whether the station is paused and the broker
//!   connected.
//!
//! Every response forbids framing, sniffing and any script or style not
//! served here. With a token configured (required beyond loopback), a
//! request without `Authorization: Bearer <token>` (or, for the page's event
//! stream and pictures, `?token=`) gets 401 and nothing else; only the page's
//! own code (`/`, `/app.js`, `/app.css`) loads without it. A request with
//! a body gets 413, but a command (`POST /api/commands`, with `[commands]`
//! on and a token configured; the same commands as `…/cmd`). Files are served only from the
//! history, found by an inspection id in its index, never by a client's path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::history::History;
use super::metrics::{self, ModelInfo};
use super::stats::Stats;
use super::worker::Settings;

/// The page, compiled in: no build step, nothing read from the disk.
const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Most results one `/api/results` answer lists.
const MAX_LIMIT: usize = 1000;

/// What the handlers read.
#[derive(Clone)]
pub struct Shared {
    /// The station's name.
    pub station: String,
    /// Its counters and series.
    pub stats: Arc<Stats>,
    /// The live inspector (none while paused or reloading).
    pub settings: watch::Receiver<Settings>,
    /// The recent results.
    pub history: Arc<History>,
    /// The bearer token requests must carry, if any.
    pub token: Option<Arc<str>>,
    /// Whether the station takes commands (over MQTT).
    pub commands_enabled: bool,
    /// Where `POST /api/commands` sends commands: only with `[commands]` on
    /// and a token configured (so every control request is authenticated).
    pub commands: Option<tokio::sync::mpsc::Sender<super::commands::Incoming>>,
    /// Cancelled at shutdown: ends the event streams (which would otherwise
    /// hold the graceful shutdown open).
    pub stop: CancellationToken,
}

impl Shared {
    fn model(&self) -> Option<ModelInfo> {
        self.settings
            .borrow()
            .recipes
            .as_deref()
            .map(|r| ModelInfo::of(r.primary()))
    }
}

/// The routes, with authentication and the security headers.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(|| page(INDEX_HTML, "text/html; charset=utf-8")))
        .route("/app.js", get(|| page(APP_JS, "text/javascript; charset=utf-8")))
        .route("/app.css", get(|| page(APP_CSS, "text/css; charset=utf-8")))
        // Browsers ask for it; there is none (a 404 would only fill logs).
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/metrics", get(metrics_text))
        .route("/api/stats", get(stats_json))
        .route("/api/state", get(state_json))
        .route("/api/results", get(results_json))
        .route("/api/results/{id}", get(result_json))
        .route("/api/results/{id}/heatmap.jpg", get(result_heatmap))
        .route("/api/results/{id}/image.jpg", get(result_image))
        .route("/api/events", get(events))
        .route("/api/commands", axum::routing::post(command))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Serve `router` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    stop: tokio_util::sync::CancellationToken,
) {
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        log::error!("http: the server stopped: {e}");
    }
}

/// The token in a query string (`?token=`, percent-decoded).
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn guard(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    // The page's own code carries no data: it loads without the token and
    // then asks for it (everything it reads is behind the token).
    let public = matches!(
        request.uri().path(),
        "/" | "/app.js" | "/app.css" | "/favicon.ico"
    );
    let allowed = match &shared.token {
        None => true,
        Some(_) if public => true,
        Some(token) => {
            let bearer = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // An EventSource or an <img> cannot send headers: the page passes
            // the token as a query parameter to those (and only those).
            let query = Query::<TokenQuery>::try_from_uri(request.uri())
                .ok()
                .and_then(|q| q.0.token);
            bearer
                .or(query.as_deref())
                .is_some_and(|given| same(given.as_bytes(), token.as_bytes()))
        }
    };
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok()?.parse::<usize>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    let is_command = request.method() == Method::POST && request.uri().path() == "/api/commands";
    // Only a command has a body, of a known and small length.
    let has_body = if is_command {
        chunked || length.is_none_or(|l| l > super::commands::MAX_BYTES)
    } else {
        chunked || length.is_some_and(|l| l > 0)
    };
    let mut response = if !allowed {
        let mut r = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    } else if has_body {
        let why = if is_command {
            "a command is a JSON body of at most 4096 bytes, with its Content-Length\n"
        } else {
            "no request but POST /api/commands takes a body\n"
        };
        (StatusCode::PAYLOAD_TOO_LARGE, why).into_response()
    } else if !is_command && !matches!(*request.method(), Method::GET | Method::HEAD) {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: GET only (commands are not enabled on this station)\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Compare without an early exit on the first difference (the time taken
/// does not tell how much of a guess was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    let text = metrics::render(&shared.stats, &shared.model().unwrap_or_default());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn stats_json(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(shared.stats.snapshot(&shared.station))
}

async fn state_json(State(shared): State<Shared>) -> Json<serde_json::Value> {
    let model = shared.model();
    let paused = shared.settings.borrow().paused;
    let s = &shared.stats;
    Json(json!({
        "station": shared.station,
        "paused": paused || model.is_none(),
        "model": model.as_ref().map(|m| &m.model),
        "bank": model.as_ref().map(|m| &m.bank),
        "object": model.as_ref().map(|m| &m.object),
        "threshold": model.as_ref().and_then(|m| m.threshold),
        "active_recipes": &*shared.settings.borrow().active,
        "device": model.as_ref().map(|m| &m.device),
        "precision": model.as_ref().map(|m| &m.precision),
        "mqtt_connected": s.mqtt_connected.load(Ordering::Relaxed),
        "commands_enabled": shared.commands_enabled,
        "control": shared.commands.is_some(),
        "history": shared.history.len(),
        "queue_depth": s.queue_depth.load(Ordering::Relaxed),
        "outbox_pending": s.outbox_pending.load(Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `/api/results` query.
#[derive(Debug, serde::Deserialize)]
struct ResultsQuery {
    limit: Option<usize>,
    /// `fail`: failures only.
    verdict: Option<String>,
}

async fn results_json(State(shared): State<Shared>, Query(q): Query<ResultsQuery>) -> Response {
    let failed_only = match q.verdict.as_deref() {
        None | Some("") => false,
        Some("fail") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("verdict={other:?}: only verdict=fail filters\n"),
            )
                .into_response()
        }
    };
    let limit = q.limit.unwrap_or(50).min(MAX_LIMIT);
    let history = Arc::clone(&shared.history);
    let list = tokio::task::spawn_blocking(move || history.list(limit, failed_only))
        .await
        .unwrap_or_default();
    Json(json!({ "results": list })).into_response()
}

fn not_kept(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no result {id:?} is kept (see [history] results)\n"),
    )
        .into_response()
}

async fn result_json(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let history = Arc::clone(&shared.history);
    let key = id.clone();
    match tokio::task::spawn_blocking(move || history.get(&key)).await {
        Ok(Some(r)) => Json(r).into_response(),
        _ => not_kept(&id),
    }
}

async fn result_heatmap(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let history = Arc::clone(&shared.history);
    let key = id.clone();
    match tokio::task::spawn_blocking(move || history.heatmap(&key)).await {
        Ok(Some(jpg)) => ([(header::CONTENT_TYPE, "image/jpeg")], jpg).into_response(),
        _ => not_kept(&id),
    }
}

/// The picture as JPEG: as read when it was one, converted otherwise.
async fn result_image(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let history = Arc::clone(&shared.history);
    let key = id.clone();
    let jpeg = tokio::task::spawn_blocking(move || {
        let p = history.picture(&key)?;
        if p.format == image::ImageFormat::Jpeg {
            return Some(p.bytes);
        }
        let img = image::load_from_memory_with_format(&p.bytes, p.format).ok()?;
        crate::heatmap::jpeg(&img.to_rgb8(), 90).ok()
    })
    .await;
    match jpeg {
        Ok(Some(jpg)) => ([(header::CONTENT_TYPE, "image/jpeg")], jpg).into_response(),
        _ => not_kept(&id),
    }
}

/// `POST /api/commands`: the body is a command as `…/cmd` takes it; the
/// answer is the reply `…/cmd/reply` would carry (200 when carried out, 400
/// when refused). Through the same queue as MQTT commands: one at a time.
async fn command(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let Some(tx) = &shared.commands else {
        let why = if shared.commands_enabled {
            "control from HTTP needs a token: set [http] token_file (the page then takes ?token=)\n"
        } else {
            "commands are off on this station ([commands] enabled = false)\n"
        };
        return (StatusCode::FORBIDDEN, why).into_response();
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let incoming = super::commands::Incoming {
        payload: body.to_vec(),
        reply: Some(reply_tx),
    };
    if tx.send(incoming).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the station is stopping\n").into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(120), reply_rx).await {
        Ok(Ok(reply)) => {
            let ok = serde_json::from_slice::<serde_json::Value>(&reply).is_ok_and(|r| r["ok"] == true);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, [(header::CONTENT_TYPE, "application/json")], reply).into_response()
        }
        _ => (StatusCode::GATEWAY_TIMEOUT, "no answer from the station\n").into_response(),
    }
}

/// Server-sent events: `result` (a new result, as `/api/results/<id>`) and
/// `lagged` (results were missed: fetch `/api/results` again).
async fn events(State(shared): State<Shared>) -> Response {
    let rx = shared.history.subscribe();
    let stop = shared.stop.clone();
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        let event = tokio::select! {
            _ = stop.cancelled() => return None,
            r = rx.recv() => match r {
                Ok(record) => Event::default().event("result").data(record.to_string()),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Event::default().event("lagged").data(n.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((Ok::<_, std::convert::Infallible>(event), (rx, stop)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
