//! The schema registry options of `pipectl run` and `pipectl gen`. Credentials are read from
//! environment variables named on the command line, never given as values (they would show
//! in `ps` and shell history).

use std::sync::Arc;
use std::time::Duration;

use connectors::registry::{Registry, RegistryConfig};

/// Where the schema registry is.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Confluent-compatible schema registry URL (such as `http://127.0.0.1:8081`):
    /// `avro_confluent` sources read each message with its writer's schema, sinks register
    /// theirs.
    #[arg(long, env = "PIPECTL_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,
    /// User for basic authentication; the password is read from --schema-registry-password-env.
    #[arg(long)]
    pub schema_registry_user: Option<String>,
    /// Environment variable holding the basic-authentication password.
    #[arg(long)]
    pub schema_registry_password_env: Option<String>,
    /// Environment variable holding a bearer token.
    #[arg(long)]
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
        let config = RegistryConfig::from_options(
            url,
            self.schema_registry_user.as_deref(),
            self.schema_registry_password_env.as_deref(),
            self.schema_registry_token_env.as_deref(),
            self.schema_registry_timeout,
        )?;
        Ok(Some(Arc::new(Registry::new(config))))
    }
}
