//! A config file from disk to a `Plan`: read, parse, compile, every error at once.

use std::path::Path;

use crate::config::{parse_partial, ConfigErrors};
use crate::plan::Plan;

/// Reads, parses and compiles a config file: every error at once, structural
/// (unknown keys, wrong types) and semantic (conflicts, bad URIs).
pub fn load_plan(path: &Path, workers: Option<usize>) -> Result<Plan, ConfigErrors> {
    load_plan_with(
        path,
        &crate::compile::gateway::Options {
            workers,
            ..crate::compile::gateway::Options::default()
        },
    )
}

/// `load_plan` with a running gateway's options (a reload).
pub fn load_plan_with(
    path: &Path,
    opts: &crate::compile::gateway::Options,
) -> Result<Plan, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push("", format!("cannot read {}: {e}", path.display()));
        errs
    })?;
    let (cfg, mut errs) = parse_partial(&text);
    let Some(mut cfg) = cfg else { return Err(errs) };
    cfg.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    match crate::compile::gateway::compile_with(&cfg, opts) {
        Ok(plan) if errs.is_empty() => Ok(plan),
        Ok(_) => Err(errs),
        Err(more) => {
            errs.0.extend(more.0);
            Err(errs)
        }
    }
}
