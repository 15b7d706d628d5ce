//! `pipectl`: the command line of the pipeline engine.
//!
//! Exit codes: 0 success, 1 the input is invalid (a pipeline has errors), 2 usage (bad
//! arguments, a file that cannot be read).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use event_schema::{SchemaRegistry, find_schema_dir};
use spec::Diagnostic;

#[derive(Debug, Parser)]
#[command(
    name = "pipectl",
    version,
    about = "Build, check and run streaming pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check pipeline files and report every error with file, line and column.
    Validate {
        /// Pipeline YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directory of event schemas (default: the nearest `schemas/` above each file).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
    },
    /// Show what a pipeline compiles to: each node's inputs, DataFusion plan and schema.
    Plan {
        /// A pipeline YAML file.
        file: PathBuf,
        /// Directory of event schemas (default: the nearest `schemas/` above the file).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
    },
    /// Print the JSON Schema of the pipeline language (for editor completion).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { files, schemas } => validate(&files, schemas.as_deref()).await,
        Command::Plan { file, schemas } => plan(&file, schemas.as_deref()).await,
        Command::Schema => {
            print!("{}", spec::json_schema());
            ExitCode::SUCCESS
        }
    }
}

/// The schema registry for `file`: the explicit directory, or the nearest `schemas/`.
fn registry_for(file: &Path, explicit: Option<&Path>) -> SchemaRegistry {
    if let Some(dir) = explicit {
        return SchemaRegistry::new(dir);
    }
    let start = file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    SchemaRegistry::new(find_schema_dir(&start).unwrap_or_else(|| PathBuf::from("schemas")))
}

enum Checked {
    Valid(Option<planner::PipelinePlan>, Box<spec::Document>),
    Invalid,
    Unreadable,
}

async fn check_file(file: &Path, schemas: Option<&Path>) -> Checked {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {name}: {e}");
            return Checked::Unreadable;
        }
    };
    let registry = registry_for(file, schemas);
    let (doc, plan) = planner::check(&name, &text, &registry, &spec::process_env).await;
    let diagnostics = doc.diagnostics();
    if diagnostics.is_empty() {
        return Checked::Valid(plan, Box::new(doc));
    }
    let lines: Vec<&str> = text.lines().collect();
    for d in &diagnostics {
        eprint!("{}", render(d, &name, &lines));
    }
    eprintln!(
        "{name}: {} error{}",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
    Checked::Invalid
}

/// A diagnostic with the offending line and a caret under the column.
fn render(d: &Diagnostic, file: &str, lines: &[&str]) -> String {
    let mut out = d.render(file);
    out.push('\n');
    if let Some(pos) = d.pos
        && let Some(line) = lines.get(pos.line.wrapping_sub(1))
    {
        let number = pos.line.to_string();
        let pad = " ".repeat(number.len());
        let caret_at: String = line
            .chars()
            .take(pos.col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!(" {number} | {line}\n {pad} | {caret_at}^\n"));
    }
    out
}

async fn validate(files: &[PathBuf], schemas: Option<&Path>) -> ExitCode {
    let mut worst = 0u8;
    for file in files {
        match check_file(file, schemas).await {
            Checked::Valid(_, doc) => {
                let p = doc.pipeline.as_ref().map(|p| &p.spec);
                let counts = p.map_or(String::new(), |s| {
                    format!(
                        " ({} sources, {} transforms, {} models, {} sinks)",
                        s.sources.len(),
                        s.transforms.len(),
                        s.models.len(),
                        s.sinks.len()
                    )
                });
                println!("{}: valid{counts}", file.display());
            }
            Checked::Invalid => worst = worst.max(1),
            Checked::Unreadable => worst = worst.max(2),
        }
    }
    ExitCode::from(worst)
}

async fn plan(file: &Path, schemas: Option<&Path>) -> ExitCode {
    match check_file(file, schemas).await {
        Checked::Valid(Some(plan), _) => {
            print!("{}", plan.explain());
            ExitCode::SUCCESS
        }
        Checked::Valid(None, _) => {
            eprintln!(
                "error: internal error: {} is valid but produced no plan; please report this",
                file.display()
            );
            ExitCode::from(1)
        }
        Checked::Invalid => ExitCode::from(1),
        Checked::Unreadable => ExitCode::from(2),
    }
}
