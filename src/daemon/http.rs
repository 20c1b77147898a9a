//! The station's HTTP endpoint (`[http]`): read-only.
//!
//! - `GET /metrics`: every number, OpenMetrics text ([`super::metrics`]);
//! - `GET /api/stats`: what `<prefix>/<station>/stats` publishes;
//! - `GET /api/state`: the running model, bank, threshold and device, whether
//!   the station is paused and the broker connected.
//!
//! Every response forbids framing and sniffing. With a token configured
//! (required beyond loopback), a request without `Authorization: Bearer
//! <token>` gets 401 and nothing else. Nothing is served from the disk.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use super::metrics::{self, ModelInfo};
use super::stats::Stats;
use super::worker::Settings;

/// What the handlers read.
#[derive(Clone)]
pub struct Shared {
    /// The station's name.
    pub station: String,
    /// Its counters and series.
    pub stats: Arc<Stats>,
    /// The live inspector (none while paused or reloading).
    pub settings: watch::Receiver<Settings>,
    /// The bearer token requests must carry, if any.
    pub token: Option<Arc<str>>,
}

impl Shared {
    fn model(&self) -> Option<ModelInfo> {
        let settings = self.settings.borrow();
        let i = settings.inspector.as_ref()?;
        Some(ModelInfo {
            model: i.model_id().to_string(),
            bank: i.bank_id().to_string(),
            object: i.bank().meta.object.clone(),
            device: i.vision().backend().name().to_string(),
            // As the f32 prints (0.3, not 0.30000001192092896).
            threshold: i.threshold().to_string().parse().ok(),
        })
    }
}

/// The routes, with authentication and the security headers.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/stats", get(stats_json))
        .route("/api/state", get(state_json))
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

async fn guard(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let allowed = match &shared.token {
        None => true,
        Some(token) => request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same(given.as_bytes(), token.as_bytes())),
    };
    let mut response = if allowed {
        next.run(request).await
    } else {
        let mut r = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
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

async fn metrics_text(State(shared): State<Shared>) -> Response {
    let text = metrics::render(&shared.stats, &shared.model().unwrap_or_default());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn stats_json(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(shared.stats.snapshot(&shared.station))
}

async fn state_json(State(shared): State<Shared>) -> Json<serde_json::Value> {
    let model = shared.model();
    let s = &shared.stats;
    Json(json!({
        "station": shared.station,
        "paused": model.is_none(),
        "model": model.as_ref().map(|m| &m.model),
        "bank": model.as_ref().map(|m| &m.bank),
        "object": model.as_ref().map(|m| &m.object),
        "threshold": model.as_ref().and_then(|m| m.threshold),
        "device": model.as_ref().map(|m| &m.device),
        "mqtt_connected": s.mqtt_connected.load(Ordering::Relaxed),
        "queue_depth": s.queue_depth.load(Ordering::Relaxed),
        "outbox_pending": s.outbox_pending.load(Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
    }))
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
