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

/// Checks `plan` against the registry's latest versions of its subjects, adding a located
/// diagnostic to `doc` for each incompatibility: an `avro_confluent` source whose topic's
/// latest writer schema cannot be read as its declared schema, and an `avro_confluent` sink
/// whose schema the registry would refuse. Subjects that do not exist yet pass. `Err`: the
/// registry did not answer.
pub fn check_plan(
    doc: &mut spec::Document,
    plan: &planner::PipelinePlan,
    registry: &Registry,
) -> Result<(), String> {
    let Some(pipeline) = doc.pipeline.clone() else {
        return Ok(());
    };
    for node in &plan.nodes {
        match &node.kind {
            planner::NodeKind::Source(s) if s.format == planner::Format::AvroConfluent => {
                let subject = format!("{}-value", s.topic);
                let latest = match registry.latest(&subject) {
                    Ok(v) => v,
                    Err(connectors::registry::RegistryError::NotFound(_)) => continue,
                    Err(e) => return Err(e.to_string()),
                };
                let codec = formats::avro::AvroCodec::new(
                    &s.avro_json,
                    s.schema.clone(),
                    formats::avro::Framing::Confluent { schema_id: 0 },
                )
                .map_err(|e| e.to_string())?;
                if let Err(why) = codec.resolve(&latest.schema) {
                    let index = pipeline
                        .spec
                        .sources
                        .iter()
                        .find(|x| x.name == node.name)
                        .map_or(0, |x| x.index);
                    doc.push(spec::Diagnostic::at_path(
                        format!("spec.sources[{index}].schema"),
                        format!(
                            "the registry's latest schema of subject `{subject}` (version {}, id {}) cannot be read as `{}`: {why}",
                            latest.version, latest.id, s.schema_name
                        ),
                    ));
                }
            }
            planner::NodeKind::Sink(s) if s.format == planner::Format::AvroConfluent => {
                let subject = s.subject.clone();
                let avsc = formats::avro::avro_schema_for(&s.schema, &node.name)
                    .map_err(|e| e.to_string())?;
                if let Err(why) = registry
                    .compatible(&subject, &avsc)
                    .map_err(|e| e.to_string())?
                {
                    let index = pipeline
                        .spec
                        .sinks
                        .iter()
                        .find(|x| x.name == node.name)
                        .map_or(0, |x| x.index);
                    doc.push(spec::Diagnostic::at_path(
                        format!("spec.sinks[{index}].format"),
                        format!(
                            "the registry would refuse this sink's schema under subject `{subject}` as incompatible with its latest version: {why}"
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
