//! The HTTP JSON API (described by `openapi.json`, served at `/openapi.json`).
//!
//! Everything under `/api/v1` needs `Authorization: Bearer TOKEN` when the daemon has a token;
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json` do not (probes and scrapers). Bodies
//! are limited in size. Errors are JSON: `{"error": "...", "diagnostics": [...]}` with the
//! located diagnostics of an invalid pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::registry::{Desired, Record, Registry, Version};
use crate::supervisor::{Live, Phase, Supervisor, log};

/// The OpenAPI description, committed beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Shared state of the handlers.
#[derive(Debug)]
pub struct App {
    /// Deployed pipelines.
    pub registry: Registry,
    /// Running pipelines.
    pub supervisor: Supervisor,
    /// Bearer token; `None` only with `--insecure`.
    pub token: Option<String>,
    /// Whether every registered pipeline has been started.
    pub ready: AtomicBool,
    /// Checks deployed pipelines in a child process under a budget.
    pub checker: crate::check::Checker,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    fn not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no pipeline `{name}` (see `pipectl list`)"),
        )
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type Reply = Result<Response, ApiError>;

/// The router: public endpoints and the authenticated API.
pub fn router(app: Arc<App>, max_body: usize) -> Router {
    let api = Router::new()
        .route("/api/v1/pipelines", get(list).post(deploy))
        .route(
            "/api/v1/pipelines/{name}",
            get(get_pipeline).delete(delete_pipeline),
        )
        .route("/api/v1/pipelines/{name}/status", get(status))
        .route("/api/v1/pipelines/{name}/versions", get(versions))
        .route("/api/v1/pipelines/{name}/stop", post(stop))
        .route("/api/v1/pipelines/{name}/start", post(start))
        .route("/api/v1/pipelines/{name}/rollback", post(rollback))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

/// Every error the API answers is JSON (`{"error": ...}`), including the ones axum makes
/// itself (a path that does not decode, a method not allowed).
async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if response.status().as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string()
    } else {
        text
    };
    let body = json!({ "error": message }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &app.token {
        // The scheme is case-insensitive (RFC 7235), the token is not.
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token);
        let ok = given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes()));
        if !ok {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (pipectl: --token or PIPECTL_TOKEN)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return r;
        }
    }
    next.run(req).await
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting pipelines\n").into_response()
    }
}

/// Runs blocking registry and supervisor work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

fn watermark_text(ms: i64) -> Value {
    if ms == i64::MIN || ms == i64::MAX {
        return Value::Null;
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// Status fields shared by list, get and status.
fn summary(record: &Record, live: Option<(u32, Arc<Live>)>) -> Value {
    let current = record.current();
    let (phase, since, last_error, restarts, warnings, failure) = match &live {
        Some((_, l)) => {
            let s = l.status();
            (
                s.phase,
                s.since,
                s.last_error,
                s.restarts,
                s.warnings,
                s.failure,
            )
        }
        None => (
            Phase::Stopped,
            current.deployed_at.clone(),
            None,
            0,
            Vec::new(),
            None,
        ),
    };
    let counter =
        |f: &dyn Fn(&runtime::Stats) -> u64| live.as_ref().map_or(0, |(_, l)| f(&l.stats));
    json!({
        "name": record.name,
        "version": current.version,
        "desired": record.desired,
        "phase": phase,
        "since": since,
        "last_error": last_error,
        "failure": failure,
        "restarts": restarts,
        "warnings": warnings,
        "events_in": counter(&|s| s.events_in.load(Ordering::Relaxed)),
        "events_out": counter(&|s| s.events_out.load(Ordering::Relaxed)),
        "errors": counter(&|s| s.errors.load(Ordering::Relaxed)),
        "dead_lettered": counter(&|s| s.dead_lettered.load(Ordering::Relaxed)),
        "late": counter(&|s| s.late.load(Ordering::Relaxed)),
        "checkpoints": counter(&|s| s.checkpoints.load(Ordering::Relaxed)),
        "kafka_errors": counter(&|s| s.kafka_errors.load(Ordering::Relaxed)),
        "lag": live.as_ref().map(|(_, l)| l.stats.lag.load(Ordering::Relaxed)).filter(|l| *l >= 0),
        "watermark": live.as_ref().map_or(Value::Null, |(_, l)| watermark_text(l.stats.watermark_ms.load(Ordering::Relaxed))),
        "tasks": owned(live.as_ref().map(|(_, l)| l), false),
        "restoring": owned(live.as_ref().map(|(_, l)| l), true),
        "models": live.as_ref().map_or(Value::Null, |(_, l)| {
            l.stats.detail.lock().map(|d| json!(d.models)).unwrap_or(Value::Null)
        }),
    })
}

/// The tasks this daemon runs of a pipeline (`restoring`: those still restoring state).
fn owned(live: Option<&Arc<Live>>, restoring: bool) -> Vec<usize> {
    live.and_then(|l| l.stats.owned.lock().ok().map(|o| o.clone()))
        .map(|o| {
            o.into_iter()
                .filter(|(_, r)| !restoring || *r)
                .map(|(i, _)| i)
                .collect()
        })
        .unwrap_or_default()
}

fn record_or_404(app: &App, name: &str) -> Result<Record, ApiError> {
    app.registry
        .get(name)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(name))
}

async fn list(State(app): State<Arc<App>>) -> Reply {
    let records = blocking({
        let app = app.clone();
        move || app.registry.all().map_err(ApiError::internal)
    })
    .await?;
    let items: Vec<Value> = records
        .iter()
        .map(|r| summary(r, app.supervisor.live(&r.name)))
        .collect();
    Ok(Json(json!({ "pipelines": items })).into_response())
}

async fn get_pipeline(State(app): State<Arc<App>>, Path(name): Path<String>) -> Reply {
    let record = blocking({
        let (app, name) = (app.clone(), name.clone());
        move || record_or_404(&app, &name)
    })
    .await?;
    let mut v = summary(&record, app.supervisor.live(&name));
    v["spec"] = json!(record.current().yaml);
    v["deployed_at"] = json!(record.current().deployed_at);
    v["versions"] = json!(record.versions.len());
    Ok(Json(v).into_response())
}

async fn status(State(app): State<Arc<App>>, Path(name): Path<String>) -> Reply {
    let record = blocking({
        let (app, name) = (app.clone(), name.clone());
        move || record_or_404(&app, &name)
    })
    .await?;
    Ok(Json(summary(&record, app.supervisor.live(&name))).into_response())
}

async fn versions(State(app): State<Arc<App>>, Path(name): Path<String>) -> Reply {
    let record = blocking(move || record_or_404(&app, &name)).await?;
    let current = record.current().version;
    let items: Vec<Value> = record
        .versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "deployed_at": v.deployed_at,
                "rollback_of": v.rollback_of,
                "current": v.version == current,
                "spec": v.yaml,
            })
        })
        .collect();
    Ok(Json(json!({ "name": record.name, "versions": items })).into_response())
}

/// A deploy request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    /// The pipeline file's text.
    yaml: String,
    /// Its file name, for diagnostics.
    #[serde(default)]
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeployQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Validates and plans a pipeline as `pipectl validate` does, with the daemon's schemas and
/// exposed variables, in a child process under a memory and time budget (see `check`).
async fn validate(
    app: &Arc<App>,
    file: &str,
    yaml: &str,
) -> Result<(Option<String>, Vec<spec::Diagnostic>), ApiError> {
    match app.checker.check(file, yaml).await {
        Ok(outcome) => Ok((outcome.name, outcome.diagnostics)),
        Err(why) => Ok((None, vec![spec::Diagnostic::at_path("", why)])),
    }
}

/// The 422 answer to an invalid pipeline: its located diagnostics.
fn invalid(file: &str, diagnostics: &[spec::Diagnostic]) -> ApiError {
    let items: Vec<Value> = diagnostics
        .iter()
        .map(|d| {
            let pos = d.pos.unwrap_or_default();
            json!({
                "file": file,
                "line": pos.line,
                "column": pos.col,
                "path": d.path,
                "message": d.message,
                "text": d.render(file),
            })
        })
        .collect();
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({
            "error": format!("{file}: {} error{}", items.len(), if items.len() == 1 { "" } else { "s" }),
            "diagnostics": items,
        }),
    }
}

/// A JSON body, or a 415/400 error in JSON that says what is wrong and where.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || (v.len() > 5 && v[v.len() - 5..].eq_ignore_ascii_case("+json"))
        });
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{what}: send JSON with `Content-Type: application/json`"),
        ));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what}: invalid JSON: expected an object at line 1 column 1"),
        ));
    }
    // serde_json's message ends with "at line L column C".
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what}: invalid JSON: {e}"),
        )
    })
}

async fn deploy(
    State(app): State<Arc<App>>,
    q: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let body: DeployBody = json_body(&headers, &body, "a deploy request")?;
    let file = body.file.unwrap_or_else(|| "pipeline.yaml".into());
    let (name, diagnostics) = validate(&app, &file, &body.yaml).await?;
    let Some(name) = name else {
        return Err(invalid(&file, &diagnostics));
    };
    let yaml = body.yaml;
    blocking(move || {
        check_groups(&app, &name, &yaml)?;
        let previous = app.registry.get(&name).map_err(ApiError::internal)?;
        let unchanged = previous.as_ref().is_some_and(|r| r.current().yaml == yaml);
        let next = previous.as_ref().map_or(1, |r| r.current().version + 1);
        if q.dry_run {
            return Ok(Json(json!({
                "name": name,
                "valid": true,
                "changed": !unchanged,
                "version": if unchanged { next - 1 } else { next },
                "dry_run": true,
            }))
            .into_response());
        }
        let was_stopped = previous
            .as_ref()
            .is_some_and(|r| r.desired == Desired::Stopped);
        let record = app
            .registry
            .update(&name, |old| {
                let mut r = old.unwrap_or(Record {
                    name: name.clone(),
                    versions: Vec::new(),
                    desired: Desired::Running,
                });
                if !unchanged {
                    r.versions.push(Version {
                        version: next,
                        yaml: yaml.clone(),
                        deployed_at: crate::now(),
                        rollback_of: None,
                    });
                }
                r.desired = Desired::Running;
                Some(r)
            })
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal("record vanished"))?;
        let current = record.current().clone();
        // An unchanged spec that runs is left alone (deploy is idempotent).
        let running = app
            .supervisor
            .live(&name)
            .is_some_and(|(_, l)| matches!(l.status().phase, Phase::Starting | Phase::Running));
        if !unchanged || was_stopped || !running {
            log(&format!(
                "deploy: {name} v{} ({})",
                current.version,
                if unchanged {
                    "unchanged, restarted"
                } else {
                    "new version"
                }
            ));
            app.supervisor.start(&name, current.version, current.yaml);
        }
        let status = if previous.is_none() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            Json(json!({
                "name": name,
                "version": current.version,
                "changed": !unchanged,
            })),
        )
            .into_response())
    })
    .await
}

/// The consumer groups a pipeline's sources join (a source's `group`, else the pipeline's
/// name).
fn consumer_groups(app: &App, yaml: &str) -> std::collections::BTreeSet<String> {
    let doc = spec::load("pipeline.yaml", yaml, &app.supervisor.settings().env);
    let Some(p) = doc.pipeline else {
        return Default::default();
    };
    p.spec
        .sources
        .iter()
        .map(|s| {
            s.kafka
                .group
                .clone()
                .unwrap_or_else(|| p.metadata.name.clone())
        })
        .collect()
}

/// Refuses a pipeline that would join another pipeline's consumer group: the group would
/// split the partitions between them, and each would stall the other.
fn check_groups(app: &App, name: &str, yaml: &str) -> Result<(), ApiError> {
    let mine = consumer_groups(app, yaml);
    for other in app.registry.all().map_err(ApiError::internal)? {
        if other.name == name {
            continue;
        }
        let theirs = consumer_groups(app, &other.current().yaml);
        if let Some(group) = mine.intersection(&theirs).next() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "consumer group `{group}` is already used by pipeline `{}`: two pipelines in one group take each other's partitions; give the source another `group`",
                    other.name
                ),
            ));
        }
    }
    Ok(())
}

async fn stop(State(app): State<Arc<App>>, Path(name): Path<String>) -> Reply {
    blocking(move || {
        app.registry
            .update(&name, |old| {
                old.map(|mut r| {
                    r.desired = Desired::Stopped;
                    r
                })
            })
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(&name))?;
        log(&format!("stop: {name}"));
        let was_running = app.supervisor.stop(&name);
        Ok(Json(json!({ "name": name, "stopped": was_running })).into_response())
    })
    .await
}

async fn start(State(app): State<Arc<App>>, Path(name): Path<String>) -> Reply {
    blocking(move || {
        let record = app
            .registry
            .update(&name, |old| {
                old.map(|mut r| {
                    r.desired = Desired::Running;
                    r
                })
            })
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(&name))?;
        let running = app
            .supervisor
            .live(&name)
            .is_some_and(|(_, l)| matches!(l.status().phase, Phase::Starting | Phase::Running));
        if !running {
            let v = record.current().clone();
            log(&format!("start: {name} v{}", v.version));
            app.supervisor.start(&name, v.version, v.yaml);
        }
        Ok(Json(json!({ "name": name, "started": !running })).into_response())
    })
    .await
}

async fn delete_pipeline(State(app): State<Arc<App>>, Path(name): Path<String>) -> Reply {
    blocking(move || {
        record_or_404(&app, &name)?;
        log(&format!("delete: {name}"));
        app.supervisor.remove(&name);
        app.registry
            .update(&name, |_| None)
            .map_err(ApiError::internal)?;
        let dir = app.supervisor.settings().checkpoint_dir(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(ApiError::internal)?;
        }
        Ok(Json(json!({ "name": name, "deleted": true })).into_response())
    })
    .await
}

/// A rollback request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The version to restore; default: the one before the current.
    #[serde(default)]
    to: Option<u32>,
}

async fn rollback(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    // No body (or an empty one) means "the version before the current".
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        json_body::<RollbackBody>(&headers, &body, "a rollback request")?.to
    };
    if to == Some(0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "versions start at 1; give `to` of 1 or more",
        ));
    }
    let (old, target) = blocking({
        let (app, name) = (app.clone(), name.clone());
        move || {
            let record = record_or_404(&app, &name)?;
            let current = record.current().version;
            if to.is_none() && current <= 1 {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("`{name}` has only version {current}: there is nothing earlier to roll back to"),
                ));
            }
            let target = to.unwrap_or(current.saturating_sub(1));
            let Some(old) = record.versions.iter().find(|v| v.version == target).cloned() else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "`{name}` has no version {target} (versions 1 to {current}; see `pipectl get {name}`)"
                    ),
                ));
            };
            if target == current {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("version {target} of `{name}` is already the current one"),
                ));
            }
            Ok((old, target))
        }
    })
    .await?;
    // The old spec is checked again as a deploy is (a version stored by an older daemon, or
    // with other schemas and variables, may not pass today's checks).
    let file = format!("{name}.yaml");
    if let (None, diagnostics) = validate(&app, &file, &old.yaml).await? {
        return Err(invalid(&file, &diagnostics));
    }
    blocking(move || {
        let record = app
            .registry
            .update(&name, |r| {
                r.map(|mut r| {
                    // The current version as it is now: a deploy may have come in between.
                    let next = r.current().version + 1;
                    r.versions.push(Version {
                        version: next,
                        yaml: old.yaml.clone(),
                        deployed_at: crate::now(),
                        rollback_of: Some(target),
                    });
                    r.desired = Desired::Running;
                    r
                })
            })
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(&name))?;
        let v = record.current().clone();
        log(&format!(
            "rollback: {name} v{} runs the spec of v{target}",
            v.version
        ));
        app.supervisor.start(&name, v.version, v.yaml);
        Ok(
            Json(json!({ "name": name, "version": v.version, "rollback_of": target }))
                .into_response(),
        )
    })
    .await
}

async fn metrics(State(app): State<Arc<App>>) -> Reply {
    let text = crate::metrics::render(&app.supervisor).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
