//! The commands that talk to a running daemon (`pipelined`): deploy, list, get, status, stop,
//! start, delete, rollback, versions.
//!
//! The server and token come from `--server` / `--token`, else `PIPECTL_SERVER` /
//! `PIPECTL_TOKEN`, else the config file (`--config`, `PIPECTL_CONFIG`, or
//! `$XDG_CONFIG_HOME/pipectl/config.yaml`, `~/.config/pipectl/config.yaml`), else
//! `http://127.0.0.1:8080` without a token.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

/// Exit code: the server refused the request (invalid pipeline, conflict, server error).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the server cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: missing or wrong token.
pub const EXIT_UNAUTHORIZED: u8 = 4;
/// Exit code: no such pipeline or version.
pub const EXIT_NOT_FOUND: u8 = 5;

/// Where the daemon is, as given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Daemon URL (such as http://127.0.0.1:8080).
    #[arg(long, env = "PIPECTL_SERVER", global = true)]
    pub server: Option<String>,
    /// API token.
    #[arg(long, env = "PIPECTL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Config file with `server:` and `token:` or `token_file:`.
    #[arg(long, env = "PIPECTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// How to print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The API's JSON.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

/// The config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("pipectl").join("config.yaml"))
}

/// A failed call, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Prints the failure and returns its exit code.
    pub fn report(self) -> ExitCode {
        eprintln!("{}", self.message);
        ExitCode::from(self.code)
    }
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// Resolves server and token from flags, environment and config file.
    pub fn new(args: &ServerArgs) -> Result<Self, Failure> {
        let path = args.config.clone().or_else(default_config_path);
        let file: ConfigFile = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Failure::new(2, format!("error: cannot read {}: {e}", p.display()))
                })?;
                serde_norway::from_str(&text).map_err(|e| {
                    Failure::new(
                        2,
                        format!(
                            "error: {}: {e} (expected `server: URL` and `token: TOKEN` or `token_file: PATH`)",
                            p.display()
                        ),
                    )
                })?
            }
            Some(p) if args.config.is_some() => {
                return Err(Failure::new(
                    2,
                    format!("error: config file {} does not exist", p.display()),
                ));
            }
            _ => ConfigFile::default(),
        };
        let token = match (&args.token, &file.token, &file.token_file) {
            (Some(t), _, _) | (None, Some(t), _) => Some(t.trim().to_string()),
            (None, None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        Failure::new(
                            2,
                            format!("error: cannot read token file {}: {e}", f.display()),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        let base = args
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Self { base, token, agent })
    }

    /// Calls the API: `method` on `path` with an optional JSON body. Returns the JSON of a
    /// 2xx answer; other answers become a [`Failure`] with the server's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let text = body.map(Value::to_string).unwrap_or_default();
        let request = request
            .body(text)
            .map_err(|e| Failure::new(2, format!("error: bad server URL {}: {e}", self.base)))?;
        let mut response = self.agent.run(request).map_err(|e| {
            Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "error: cannot reach the daemon at {}: {e} (set --server or PIPECTL_SERVER)",
                    self.base
                ),
            )
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let code = match status {
            401 => EXIT_UNAUTHORIZED,
            404 => EXIT_NOT_FOUND,
            _ => EXIT_FAILED,
        };
        let mut out = format!("error: {message}");
        if let Some(items) = value.get("diagnostics").and_then(Value::as_array) {
            for d in items {
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    out.push('\n');
                    out.push_str(t);
                }
            }
        }
        Err(Failure::new(code, out))
    }
}

/// Prints `value` as JSON or YAML; `table` prints it for people.
pub fn print(value: &Value, output: Output, table: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!("{}", serde_norway::to_string(value).unwrap_or_default()),
        Output::Table => print!("{}", table(value)),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns aligned on the widest cell.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// The table of pipelines (list, get).
pub fn pipelines_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            let mut error = text(&p["last_error"]);
            if error.chars().count() > 60 {
                error = error.chars().take(57).collect::<String>() + "...";
            }
            vec![
                text(&p["name"]),
                text(&p["version"]),
                text(&p["phase"]),
                text(&p["since"]),
                text(&p["events_in"]),
                text(&p["events_out"]),
                text(&p["lag"]),
                error,
            ]
        })
        .collect();
    columns(
        &[
            "NAME",
            "VERSION",
            "PHASE",
            "SINCE",
            "IN",
            "OUT",
            "LAG",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// The status of one pipeline, a field a line.
pub fn status_table(v: &Value) -> String {
    let mut out = String::new();
    for key in [
        "name",
        "version",
        "desired",
        "phase",
        "since",
        "events_in",
        "events_out",
        "events_in_per_second",
        "events_out_per_second",
        "errors",
        "dead_lettered",
        "late",
        "lag",
        "watermark",
        "checkpoints",
        "kafka_errors",
        "restarts",
        "last_error",
    ] {
        match &v[key] {
            // Rates exist only when watching.
            Value::Null if key.ends_with("_per_second") => {}
            Value::Number(n) if key.ends_with("_per_second") => out.push_str(&format!(
                "{:<15}{:.0}\n",
                format!("{}/s:", key.trim_end_matches("_per_second")),
                n.as_f64().unwrap_or(0.0)
            )),
            x => out.push_str(&format!("{:<15}{}\n", format!("{key}:"), text(x))),
        }
    }
    if let Some(tasks) = v["tasks"].as_array().filter(|t| !t.is_empty()) {
        let list = |a: &[Value]| a.iter().map(text).collect::<Vec<_>>().join(", ");
        let restoring = v["restoring"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!("{:<15}{}", "tasks:", list(tasks)));
        if !restoring.is_empty() {
            out.push_str(&format!(" (restoring {})", list(&restoring)));
        }
        out.push('\n');
    }
    if let Some(models) = v["models"].as_object() {
        for (name, m) in models {
            let mut line = format!(
                "model {name}: {} keys, {} samples",
                text(&m["keys"]),
                text(&m["samples"])
            );
            for metric in ["mae", "rmse", "r2", "inertia"] {
                if let Some(x) = m[metric].as_f64() {
                    line.push_str(&format!(", {metric} {x:.4}"));
                }
            }
            if m["drift_alarms"].as_u64().unwrap_or(0) > 0 {
                line.push_str(&format!(", {} drift alarms", m["drift_alarms"]));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    if let Some(w) = v["warnings"].as_array() {
        for w in w {
            out.push_str(&format!("warning:       {}\n", text(w)));
        }
    }
    out
}

/// The versions of one pipeline.
pub fn versions_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["versions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|x| {
            vec![
                text(&x["version"]),
                text(&x["deployed_at"]),
                if x["current"].as_bool() == Some(true) {
                    "*".into()
                } else {
                    String::new()
                },
                x["rollback_of"]
                    .as_u64()
                    .map(|r| format!("rollback to {r}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    columns(&["VERSION", "DEPLOYED", "CURRENT", "NOTE"], &rows)
}

/// A unified diff of the deployed spec and the file, for `deploy`.
pub fn diff(name: &str, deployed: &str, version: u64, file: &str, new: &str) -> String {
    let diff = similar::TextDiff::from_lines(deployed, new);
    let body = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("{name} (deployed version {version})"), file)
        .to_string();
    if std::io::stdout().is_terminal() {
        body.lines()
            .map(|l| {
                if l.starts_with('+') && !l.starts_with("+++") {
                    format!("\x1b[32m{l}\x1b[0m\n")
                } else if l.starts_with('-') && !l.starts_with("---") {
                    format!("\x1b[31m{l}\x1b[0m\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    } else {
        body
    }
}

/// The path of a pipeline's resource.
pub fn pipeline_path(name: &str, rest: &str) -> String {
    format!("/api/v1/pipelines/{name}{rest}")
}

/// A deploy request.
pub fn deploy_body(file: &str, yaml: &str) -> Value {
    json!({ "file": file, "yaml": yaml })
}
