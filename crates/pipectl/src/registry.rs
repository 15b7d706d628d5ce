//! The schema registry options of `pipectl run` and `pipectl gen`. Credentials are read from
//! environment variables named on the command line, never given as values (they would show
//! in `ps` and shell history).

use std::sync::Arc;
use std::time::Duration;

use connectors::registry::{Registry, RegistryAuth, RegistryConfig};

/// Where the schema registry is.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Confluent-compatible schema registry URL (such as `http://127.0.0.1:8081`):
    /// `avro_confluent` sources read each message with its writer's schema, sinks register
    /// theirs.
    #[arg(long, env = "PIPECTL_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,
    /// User for basic authentication; the password is read from --schema-registry-password-env.
    #[arg(long, requires = "schema_registry_password_env")]
    pub schema_registry_user: Option<String>,
    /// Environment variable holding the basic-authentication password.
    #[arg(long, requires = "schema_registry_user")]
    pub schema_registry_password_env: Option<String>,
    /// Environment variable holding a bearer token.
    #[arg(long, conflicts_with = "schema_registry_user")]
    pub schema_registry_token_env: Option<String>,
    /// Time allowed for one registry request.
    #[arg(long, value_parser = crate::parse_duration, default_value = "10s")]
    pub schema_registry_timeout: Duration,
}

impl RegistryArgs {
    /// The registry client, if a URL was given.
    pub fn connect(&self) -> Result<Option<Arc<Registry>>, String> {
        let Some(url) = &self.schema_registry else {
            return Ok(None);
        };
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!(
                    "the environment variable `{name}` named for the schema registry is not set"
                )
            })
        };
        let auth = match (
            &self.schema_registry_user,
            &self.schema_registry_password_env,
            &self.schema_registry_token_env,
        ) {
            (Some(user), Some(password), _) => Some(RegistryAuth::Basic {
                user: user.clone(),
                password: var(password)?,
            }),
            (_, _, Some(token)) => Some(RegistryAuth::Bearer(var(token)?)),
            _ => None,
        };
        Ok(Some(Arc::new(Registry::new(RegistryConfig {
            url: url.clone(),
            auth,
            timeout: self.schema_registry_timeout,
        }))))
    }
}
