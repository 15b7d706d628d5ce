//! A client of a Confluent-compatible schema registry (Confluent Schema Registry, Apicurio's
//! `ccompat` API, Redpanda): schemas by id, registration under a subject. Lookups by id are
//! cached for the life of the client (a registry never changes what an id means), so a
//! source asks once per new id, never per message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// Where the registry is and how to authenticate.
#[derive(Clone)]
pub struct RegistryConfig {
    /// Base URL, such as `http://127.0.0.1:8081` or `http://host/apis/ccompat/v7`.
    pub url: String,
    /// Credentials, if the registry needs them.
    pub auth: Option<RegistryAuth>,
    /// Time allowed for one request.
    pub timeout: Duration,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field(
                "auth",
                &self.auth.as_ref().map(|a| match a {
                    RegistryAuth::Basic { user, .. } => format!("basic {user}:***"),
                    RegistryAuth::Bearer(_) => "bearer ***".to_string(),
                }),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RegistryConfig {
    /// The configuration command-line options describe: credentials come from the
    /// environment variables they name (basic: `user` with the password in
    /// `password_env`; or a bearer token in `token_env`), never from the command line.
    pub fn from_options(
        url: &str,
        user: Option<&str>,
        password_env: Option<&str>,
        token_env: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!(
                    "the environment variable `{name}` named for the schema registry is not set"
                )
            })
        };
        let auth = match (user, password_env, token_env) {
            (Some(_), _, Some(_)) => {
                return Err("give the schema registry a user or a token, not both".into());
            }
            (Some(user), Some(password), None) => Some(RegistryAuth::Basic {
                user: user.to_string(),
                password: var(password)?,
            }),
            (Some(_), None, None) | (None, Some(_), _) => {
                return Err(
                    "basic authentication to the schema registry needs both a user and a password variable".into(),
                );
            }
            (None, None, Some(token)) => Some(RegistryAuth::Bearer(var(token)?)),
            (None, None, None) => None,
        };
        Ok(Self {
            url: url.to_string(),
            auth,
            timeout,
        })
    }
}

/// Registry credentials (secrets: never printed).
#[derive(Clone)]
pub enum RegistryAuth {
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such schema or subject.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused a schema as incompatible with the subject's earlier versions.
    #[error("{0}")]
    Incompatible(String),
    /// The registry answered with another error.
    #[error("{0}")]
    Refused(String),
    /// No answer (retryable).
    #[error("{0}")]
    Unreachable(String),
}

/// A registry client.
pub struct Registry {
    config: RegistryConfig,
    agent: ureq::Agent,
    by_id: Mutex<HashMap<u32, String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish()
    }
}

/// A subject's version.
#[derive(Debug, Clone)]
pub struct Version {
    /// Schema id.
    pub id: u32,
    /// Version number within the subject.
    pub version: u32,
    /// The schema (JSON text).
    pub schema: String,
}

impl Registry {
    /// A client of the registry `config` describes.
    pub fn new(config: RegistryConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .build()
            .into();
        Self {
            config,
            agent,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, RegistryError> {
        let url = format!("{}{path}", self.config.url.trim_end_matches('/'));
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        match &self.config.auth {
            Some(RegistryAuth::Basic { user, password }) => {
                request = request.header(
                    "Authorization",
                    format!("Basic {}", base64(&format!("{user}:{password}"))),
                );
            }
            Some(RegistryAuth::Bearer(t)) => {
                request = request.header("Authorization", format!("Bearer {t}"));
            }
            None => {}
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/vnd.schemaregistry.v1+json");
        }
        let request = request
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .map_err(|e| RegistryError::Refused(format!("bad registry URL {url}: {e}")))?;
        let mut response = self.agent.run(request).map_err(|e| {
            RegistryError::Unreachable(format!("schema registry {}: {e}", self.config.url))
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = format!(
            "schema registry {} answered {status} to {method} {path}: {}",
            self.config.url,
            value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string())
        );
        Err(match status {
            404 => RegistryError::NotFound(message),
            409 => RegistryError::Incompatible(message),
            500.. => RegistryError::Unreachable(message),
            _ => RegistryError::Refused(message),
        })
    }

    /// The schema of id `id` (cached).
    pub fn schema(&self, id: u32) -> Result<String, RegistryError> {
        if let Some(s) = self.by_id.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        let v = self.call("GET", &format!("/schemas/ids/{id}"), None)?;
        let schema = v
            .get("schema")
            .and_then(Value::as_str)
            .ok_or_else(|| RegistryError::Refused(format!("no schema in the answer for id {id}")))?
            .to_string();
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id, schema.clone());
        }
        Ok(schema)
    }

    /// Registers `schema` (Avro, JSON text) under `subject` and returns its id (the existing
    /// id when the subject already has it). An incompatible schema is refused.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let v = self.call(
            "POST",
            &format!("/subjects/{}/versions", encode(subject)),
            Some(serde_json::json!({ "schema": schema, "schemaType": "AVRO" })),
        )?;
        let id = v
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| RegistryError::Refused(format!("no id in the answer: {v}")))?;
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id, schema.to_string());
        }
        Ok(id)
    }

    /// Whether `schema` could be registered under `subject` by the subject's compatibility
    /// level: `Ok(Err(why))` when it could not (a subject that does not exist accepts any).
    pub fn compatible(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Result<(), String>, RegistryError> {
        let answer = self.call(
            "POST",
            &format!(
                "/compatibility/subjects/{}/versions/latest",
                encode(subject)
            ),
            Some(serde_json::json!({ "schema": schema, "schemaType": "AVRO" })),
        );
        let v = match answer {
            Ok(v) => v,
            Err(RegistryError::NotFound(_)) => return Ok(Ok(())),
            Err(e) => return Err(e),
        };
        if v.get("is_compatible").and_then(Value::as_bool) == Some(false) {
            let why = v
                .get("messages")
                .filter(|m| m.as_array().is_some_and(|a| !a.is_empty()))
                .unwrap_or(&v)
                .to_string();
            return Ok(Err(why));
        }
        Ok(Ok(()))
    }

    /// The latest version of `subject`.
    pub fn latest(&self, subject: &str) -> Result<Version, RegistryError> {
        let v = self.call(
            "GET",
            &format!("/subjects/{}/versions/latest", encode(subject)),
            None,
        )?;
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
        };
        Ok(Version {
            id: num("id").ok_or_else(|| RegistryError::Refused(format!("no id in {v}")))?,
            version: num("version").unwrap_or(0),
            schema: v
                .get("schema")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// Percent-encodes a subject for a URL path.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain), coded);
        }
        assert_eq!(super::encode("a b/c-value"), "a%20b%2Fc-value");
    }

    #[test]
    fn credentials_come_from_named_variables_and_are_never_printed() {
        use super::RegistryConfig;
        let t = std::time::Duration::from_secs(1);
        // A variable every test process has stands in for the password.
        let secret = std::env::var("PATH").expect("PATH is set");
        let c = RegistryConfig::from_options("http://r", Some("alice"), Some("PATH"), None, t)
            .expect("basic");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains(&secret),
            "{shown}"
        );
        let e =
            RegistryConfig::from_options("http://r", None, None, Some("REGISTRY_TEST_UNSET"), t)
                .expect_err("unset");
        assert!(e.contains("`REGISTRY_TEST_UNSET`"), "{e}");
        let e = RegistryConfig::from_options("http://r", Some("alice"), None, None, t)
            .expect_err("no password");
        assert!(e.contains("needs both"), "{e}");
        let e = RegistryConfig::from_options("http://r", Some("a"), Some("P"), Some("T"), t)
            .expect_err("both");
        assert!(e.contains("not both"), "{e}");
    }
}
