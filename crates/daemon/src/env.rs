//! What `${NAME}` resolves to in pipelines the daemon runs: only what the operator exposes.
//!
//! A pipeline's author is not the daemon's operator: `${PIPELINED_TOKEN}` or any other
//! variable of the daemon's process must not reach a pipeline, where it could be written to a
//! topic or shown in a label. The operator exposes variables explicitly:
//!
//! - `--pipeline-env PREFIX`: process variables whose names start with PREFIX, as plain values
//!   (usable in topics, groups, SQL; whoever can read the outputs can read them);
//! - `--secret-env PREFIX`: process variables whose names start with PREFIX, as secrets
//!   (usable only as the whole value of a secret Kafka property, never shown);
//! - `--secrets-dir DIR`: each file `DIR/NAME` is the secret `NAME` (a Kubernetes secret
//!   volume), its content without the trailing newline.
//!
//! Names starting with `PIPELINED_` (the daemon's own settings and token) are never exposed,
//! whatever the prefixes say.

use std::path::PathBuf;

use spec::interp::is_env_name;

/// Variables starting with this are the daemon's own, never a pipeline's.
pub const RESERVED_PREFIX: &str = "PIPELINED_";
/// Largest secret file read, bytes.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The variables pipelines may use.
#[derive(Debug, Clone, Default)]
pub struct PipelineEnv {
    plain: Vec<String>,
    secret: Vec<String>,
    secrets_dir: Option<PathBuf>,
}

fn check_prefix(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if !ok {
        return Err(format!(
            "`{p}` is not a variable-name prefix: use letters, digits and `_`, such as `PIPELINE_`"
        ));
    }
    if p.starts_with(RESERVED_PREFIX) || RESERVED_PREFIX.starts_with(p) {
        return Err(format!(
            "the prefix `{p}` covers the daemon's own `{RESERVED_PREFIX}*` variables (its token among them), which are never exposed; choose another prefix"
        ));
    }
    Ok(())
}

impl PipelineEnv {
    /// Checks the prefixes and the directory.
    pub fn new(
        plain: Vec<String>,
        secret: Vec<String>,
        secrets_dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        for p in plain.iter().chain(&secret) {
            check_prefix(p)?;
        }
        if let Some(dir) = &secrets_dir
            && !dir.is_dir()
        {
            return Err(format!(
                "--secrets-dir {} is not a directory",
                dir.display()
            ));
        }
        Ok(Self {
            plain,
            secret,
            secrets_dir,
        })
    }

    fn exposed_name(&self, name: &str) -> bool {
        !name.starts_with(RESERVED_PREFIX)
            && self
                .plain
                .iter()
                .chain(&self.secret)
                .any(|p| name.starts_with(p.as_str()))
    }

    fn secret_file(&self, name: &str) -> Option<String> {
        let dir = self.secrets_dir.as_ref()?;
        if !is_env_name(name) || name.starts_with(RESERVED_PREFIX) {
            return None;
        }
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.strip_suffix('\n').unwrap_or(&text).to_string())
    }

    /// The process variables this exposes, to hand to a checking child process.
    pub fn exposed_process_vars(&self) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(name, _)| self.exposed_name(name))
            .collect()
    }

    /// The flags that make the same environment in a child `pipelined`.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.plain {
            out.extend(["--pipeline-env".to_string(), p.clone()]);
        }
        for p in &self.secret {
            out.extend(["--secret-env".to_string(), p.clone()]);
        }
        if let Some(d) = &self.secrets_dir {
            out.extend(["--secrets-dir".to_string(), d.display().to_string()]);
        }
        out
    }
}

impl spec::Env for PipelineEnv {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.secret_file(name) {
            return Some(v);
        }
        if self.exposed_name(name) {
            return std::env::var(name).ok();
        }
        None
    }

    fn is_secret(&self, name: &str) -> bool {
        self.secret_file(name).is_some()
            || (!name.starts_with(RESERVED_PREFIX)
                && self.secret.iter().any(|p| name.starts_with(p.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::Env;

    #[test]
    fn only_exposed_variables_resolve_and_never_the_daemons_own() {
        let dir = std::env::temp_dir().join(format!("pipeline-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("KAFKA_PASSWORD"), "from-file\n").expect("secret");
        std::fs::write(dir.join("PIPELINED_TOKEN"), "nope").expect("reserved");
        let env = PipelineEnv::new(vec!["PATH".into()], vec!["HOME".into()], Some(dir.clone()))
            .expect("valid");
        assert_eq!(env.get("KAFKA_PASSWORD").as_deref(), Some("from-file"));
        assert!(env.is_secret("KAFKA_PASSWORD"));
        assert_eq!(env.get("PATH"), std::env::var("PATH").ok());
        assert!(!env.is_secret("PATH"));
        assert!(env.is_secret("HOME"));
        assert_eq!(env.get("PIPELINED_TOKEN"), None);
        assert_eq!(env.get("USER"), None);
        assert_eq!(env.get("../etc/passwd"), None);
        assert!(PipelineEnv::new(vec!["PIPE".into()], vec![], None).is_err());
        assert!(PipelineEnv::new(vec![String::new()], vec![], None).is_err());
        assert!(PipelineEnv::new(vec![], vec!["PIPELINED_X".into()], None).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
