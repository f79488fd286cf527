//! OpenAPI with AWS's `x-amazon-apigateway-*` extensions: `import` makes a
//! config of an AWS export, `export` writes an API of a config as one.

pub mod context;
pub mod export;
pub mod import;
pub mod integration;

use std::path::Path;

/// `shardgate import openapi FILE [--out CONFIG]`: the config on stdout (or in
/// `out`), what was not mapped on stderr, one line each.
pub fn import_file(file: &Path, out: Option<&Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc = import::parse_document(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let done = import::import(&doc).map_err(|e| format!("{}: {e}", file.display()))?;
    let yaml = format!(
        "# Made by `shardgate import openapi {}`.\n{}",
        file.display(),
        import::to_yaml(&done.config)?
    );
    for n in &done.unmapped {
        eprintln!("unmapped: {n}");
    }
    for n in &done.hints {
        eprintln!("note: {n}");
    }
    eprintln!(
        "imported {} route(s); {} item(s) not mapped",
        done.config["apis"][0]["routes"]
            .as_array()
            .map_or(0, Vec::len),
        done.unmapped.len()
    );
    match out {
        Some(p) => {
            std::fs::write(p, yaml).map_err(|e| format!("cannot write {}: {e}", p.display()))
        }
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

/// `shardgate export openapi --config FILE --api NAME [--format yaml|json]`:
/// the document on stdout, what it cannot say as AWS would on stderr.
pub fn export_file(config: &Path, api: &str, format: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let cfg =
        crate::config::parse(&text).map_err(|errs| format!("{}: {errs}", config.display()))?;
    let done = export::export(&cfg, api)?;
    for n in &done.notes {
        eprintln!("note: {n}");
    }
    let text = match format {
        "json" => serde_json::to_string_pretty(&done.document).map_err(|e| e.to_string())? + "\n",
        "yaml" => import::yaml_in_order(
            &done.document,
            &[
                "openapi",
                "info",
                "servers",
                "paths",
                "components",
                "type",
                "name",
            ],
        )?,
        other => return Err(format!("--format {other:?}: yaml or json")),
    };
    print!("{text}");
    Ok(())
}
