//! The admin listener (loopback by default): `GET /healthz`, `/readyz`, `/routes`,
//! `/metrics`. Plain HTTP/1.1; never on the request path.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::live::Live;
use crate::reload;
use crate::routing::Backend;

/// What admin reads: the live state, the reload status, whether the proxy is draining.
pub struct State {
    pub live: Arc<Live>,
    pub reloads: Arc<reload::Status>,
    pub draining: Arc<AtomicBool>,
    pub config_path: PathBuf,
}

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if state.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else {
                text(StatusCode::OK, "ready\n".into())
            }
        }
        "/routes" => {
            let body = serde_json::to_string_pretty(&routes(state)).unwrap_or_default();
            with_type(StatusCode::OK, body + "\n", "application/json")
        }
        "/metrics" => with_type(
            StatusCode::OK,
            state.live.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz /readyz /routes /metrics\n".into(),
        ),
    }
}

/// The live table as JSON: version, load time, every split with configured weights and
/// the shares observed since the last reload, and each backend's retries and endpoint
/// health (outlier detection).
pub fn routes(state: &State) -> serde_json::Value {
    state.live.metrics.health.sweep();
    let table = state.live.routes.load();
    let loaded = table.loaded_at;
    let (now, wall) = (table.health.now(), SystemTime::now());
    let splits: Vec<_> = table
        .splits()
        .iter()
        .map(|s| {
            let total_weight = s.total_weight();
            let observed_total: u64 = s.backends.iter().map(|b| b.observed()).sum();
            let backends: Vec<_> = s
                .backends
                .iter()
                .map(|b| {
                    let observed = b.observed();
                    json!({
                        "service": b.service,
                        "weight": b.weight,
                        "configuredShare": if total_weight == 0 { 0.0 } else { b.weight as f64 / total_weight as f64 },
                        "requests": observed,
                        "observedShare": if observed_total == 0 { serde_json::Value::Null } else { json!(observed as f64 / observed_total as f64) },
                        "endpoints": b.endpoints.list(),
                        "retries": b.counters.retries.get(),
                        "ejected": b.is_out(now),
                        "health": endpoint_health(b, now, wall),
                        "unresolved": b.unresolved,
                    })
                })
                .collect();
            let src = s.source();
            let (kind, route) = match s.gateway() {
                None => ("TrafficSplit", serde_json::Value::Null),
                Some((r, i)) => (
                    "HTTPRoute",
                    json!({
                        "name": r.name,
                        "rule": i,
                        "hostnames": r.hostnames,
                        "matches": r.rules[i].matches.iter().map(crate::routing::gateway::describe_match).collect::<Vec<_>>(),
                        "backendRefs": r.rules[i].backends.iter().map(|b| json!({
                            "name": b.name,
                            "namespace": b.namespace,
                            "port": b.port,
                            "weight": b.weight,
                            "resolvesTo": match &b.target {
                                crate::config::BackendTarget::Service(s) => format!("spec.services.{s}"),
                                crate::config::BackendTarget::Dns(e) => e.to_string(),
                                crate::config::BackendTarget::Unresolved => "nothing: answered 500".to_string(),
                            },
                        })).collect::<Vec<_>>(),
                    }),
                ),
            };
            json!({
                "kind": kind,
                "httpRoute": route,
                "name": src.name,
                "namespace": src.namespace,
                "service": src.service,
                "hosts": src.hosts,
                "selection": src.selection.name(),
                "totalWeight": total_weight,
                "fallback": s.fallback.as_ref().map(|f| &f.service),
                "fallbackHealth": s.fallback.as_ref().map(|f| endpoint_health(f, now, wall)),
                "backends": backends,
            })
        })
        .collect();
    json!({
        "version": table.version,
        "loadedAt": humantime::format_rfc3339_millis(loaded).to_string(),
        "loadedAtUnix": loaded.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "config": state.config_path.display().to_string(),
        "fingerprint": format!("{:016x}", table.config.fingerprint),
        "lastReloadErrors": state.reloads.last_errors(),
        "retries": {"attempts": table.retries},
        "outlierDetection": {
            "consecutiveFailures": table.outlier.consecutive_failures,
            "consecutive5xx": table.outlier.consecutive_5xx,
            "baseEjectionSeconds": table.outlier.base_ejection_time.as_secs_f64(),
            "maxEjectedPercent": table.outlier.max_ejected_percent,
        },
        "splits": splits,
    })
}

/// Each endpoint of `b`: whether it is ejected and until when, how often it was, the
/// length of its current or last ejection, and its running failure counts.
fn endpoint_health(b: &Backend, now: u64, wall: SystemTime) -> Vec<serde_json::Value> {
    b.endpoints.with_list(|list| {
        list.iter()
            .map(|e| {
                let h = b.health.snapshot(&e.health, now);
                let until = h
                    .ejected
                    .then(|| humantime::format_rfc3339_millis(wall + h.remaining).to_string());
                json!({
                    "endpoint": e.addr.to_string(),
                    "ejected": h.ejected,
                    "ejectedUntil": until,
                    "ejectedForSeconds": h.remaining.as_secs_f64(),
                    "ejections": h.ejections,
                    "lastEjectionSeconds": h.last_ejection.as_secs_f64(),
                    "consecutiveFailures": h.failures,
                    "consecutive5xx": h.fives,
                })
            })
            .collect()
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("splitproxy"));
    resp
}
