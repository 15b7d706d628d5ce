//! The registry of deployed pipelines: every version of every pipeline and whether it should
//! run, in an embedded transactional store (redb) in the state directory, so that a restarted
//! daemon starts again what was running.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Pipeline name -> its [`Record`] as JSON.
const PIPELINES: TableDefinition<&str, &str> = TableDefinition::new("pipelines");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[error("registry: {0}")]
pub struct RegistryError(String);

fn err(e: impl std::fmt::Display) -> RegistryError {
    RegistryError(e.to_string())
}

/// Whether a pipeline should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Run it (again after a daemon restart).
    Running,
    /// Keep it stopped.
    Stopped,
}

/// One deployed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, ...
    pub version: u32,
    /// The pipeline file as deployed.
    pub yaml: String,
    /// When, RFC 3339.
    pub deployed_at: String,
    /// For a rollback: the version whose spec it restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u32>,
}

/// A pipeline's history and desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its name.
    pub name: String,
    /// Every version, oldest first (append-only: a rollback adds a version).
    pub versions: Vec<Version>,
    /// Whether it should run.
    pub desired: Desired,
}

impl Record {
    /// The current (latest) version.
    pub fn current(&self) -> &Version {
        // A record is created with one version and versions are never removed.
        &self.versions[self.versions.len() - 1]
    }
}

/// The store.
#[derive(Debug)]
pub struct Registry {
    db: Database,
}

impl Registry {
    /// Opens (or creates) the registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let db = Database::create(state_dir.join("registry.redb")).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(PIPELINES).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Every record, by name.
    pub fn all(&self) -> Result<Vec<Record>, RegistryError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(PIPELINES).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (_, v) = entry.map_err(err)?;
            out.push(serde_json::from_str(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// One record.
    pub fn get(&self, name: &str) -> Result<Option<Record>, RegistryError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(PIPELINES).map_err(err)?;
        let Some(v) = table.get(name).map_err(err)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_str(v.value()).map_err(err)?))
    }

    /// Changes one record in a transaction: `change` gets the current record (if any) and
    /// returns the new one (`None` deletes it). Returns the new record.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, RegistryError> {
        let tx = self.db.begin_write().map_err(err)?;
        let new = {
            let mut table = tx.open_table(PIPELINES).map_err(err)?;
            let old: Option<Record> = match table.get(name).map_err(err)? {
                Some(v) => Some(serde_json::from_str(v.value()).map_err(err)?),
                None => None,
            };
            let new = change(old);
            match &new {
                Some(r) => {
                    let text = serde_json::to_string(r).map_err(err)?;
                    table.insert(name, text.as_str()).map_err(err)?;
                }
                None => {
                    table.remove(name).map_err(err)?;
                }
            }
            new
        };
        tx.commit().map_err(err)?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u32, yaml: &str) -> Version {
        Version {
            version: n,
            yaml: yaml.into(),
            deployed_at: "2026-01-01T00:00:00Z".into(),
            rollback_of: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_deletes_are_kept() {
        let dir = std::env::temp_dir().join(format!("registry-test-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        {
            let r = Registry::open(&dir).expect("open");
            for name in ["a", "b"] {
                r.update(name, |_| {
                    Some(Record {
                        name: name.into(),
                        versions: vec![version(1, "one")],
                        desired: Desired::Running,
                    })
                })
                .expect("insert");
            }
            r.update("a", |old| {
                let mut rec = old.expect("a exists");
                rec.versions.push(version(2, "two"));
                rec.desired = Desired::Stopped;
                Some(rec)
            })
            .expect("update");
            r.update("b", |_| None).expect("delete");
        }
        let r = Registry::open(&dir).expect("reopen");
        let all = r.all().expect("all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "a");
        assert_eq!(all[0].current().yaml, "two");
        assert_eq!(all[0].desired, Desired::Stopped);
        assert!(r.get("b").expect("get").is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
