//! API keys: create, change, delete, and import from AWS's CSV format.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::control::registry::*;
use crate::encode::{hex, random_alnum, random_id};
use crate::ids::StageId;
use crate::policy::keys::{self};
use crate::policy::usage::{now_s, valid_key_value, KeyDef};

/// What a CSV import did.
#[derive(Debug, Default, Serialize)]
pub struct Imported {
    pub ids: Vec<String>,
    pub warnings: Vec<String>,
}

/// The fields a key may be created with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A value to use (20-128 letters and digits); generated when absent.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub plans: Vec<String>,
}

/// The fields of a key that may change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl Registry {
    // ---- keys ----

    /// A random key id no key has yet.
    pub(crate) fn new_key_id(&self) -> String {
        loop {
            let id = random_id();
            if !self.keys.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn keys(&self) -> Vec<&KeyDef> {
        self.keys.values().collect()
    }

    pub fn key(&self, id: &str) -> Result<&KeyDef, ApiError> {
        self.keys
            .get(id)
            .ok_or_else(|| ApiError::not_found("API key", id))
    }

    /// The stages `plans` cover; an error if two of them cover one stage, or if one
    /// does not exist.
    pub(crate) fn check_plans(&self, plans: &[String]) -> Result<(), ApiError> {
        let mut seen: HashMap<StageId, &str> = HashMap::new();
        for p in plans {
            let (_, res) = self
                .plans
                .get(p)
                .ok_or_else(|| ApiError::bad(format!("no usage plan {p:?}")))?;
            for &s in &res.stages {
                if let Some(other) = seen.insert(s, p) {
                    return Err(ApiError::conflict(format!(
                        "usage plans {other:?} and {p:?} both cover stage {:?}: a key is in at most one usage plan per stage",
                        self.stage_names(&[s])[0]
                    )));
                }
            }
        }
        Ok(())
    }

    /// Creates a key; returns it and its value (shown this once).
    pub fn create_key(&mut self, new: NewKey) -> Result<(KeyDef, String), ApiError> {
        let value = match new.value {
            Some(v) if !valid_key_value(&v) => {
                return Err(ApiError::bad("value must be 20 to 128 letters and digits"))
            }
            Some(v) => v,
            None => random_alnum(40),
        };
        let hash = keys::hash(value.as_bytes());
        if let Some(id) = self.by_hash.get(&hash) {
            return Err(ApiError::conflict(format!(
                "an API key with this value exists: {id}"
            )));
        }
        let mut plans = new.plans;
        plans.dedup();
        self.check_plans(&plans)?;
        let id = self.new_key_id();
        let name = new.name.unwrap_or_else(|| id.clone());
        if name.len() > 1024 {
            return Err(ApiError::bad("name must be at most 1,024 characters"));
        }
        let def = KeyDef {
            id: id.clone(),
            name,
            description: new.description.unwrap_or_default(),
            enabled: new.enabled.unwrap_or(true),
            plans,
            created_s: now_s(),
            hash: hex(&hash),
        };
        self.store.put_key(&def)?;
        self.by_hash.insert(hash, id.clone());
        self.keys.insert(id, def.clone());
        self.rebuild();
        Ok((def, value))
    }

    pub fn update_key(&mut self, id: &str, patch: KeyPatch) -> Result<KeyDef, ApiError> {
        let mut def = self.key(id)?.clone();
        if let Some(n) = patch.name {
            if n.is_empty() || n.len() > 1024 {
                return Err(ApiError::bad("name must be 1 to 1,024 characters"));
            }
            def.name = n;
        }
        if let Some(d) = patch.description {
            def.description = d;
        }
        if let Some(e) = patch.enabled {
            def.enabled = e;
        }
        self.store.put_key(&def)?;
        self.keys.insert(id.to_owned(), def.clone());
        self.rebuild();
        Ok(def)
    }

    pub fn delete_key(&mut self, id: &str) -> Result<(), ApiError> {
        let def = self.key(id)?.clone();
        self.store.delete_key(id)?;
        if let Some(h) = def.key_hash() {
            self.by_hash.remove(&h);
        }
        self.keys.remove(id);
        self.rebuild();
        Ok(())
    }

    /// Imports keys from AWS's CSV format: a header naming the columns (any order,
    /// any case) among `key,name,description,enabled,usageplanIds`, then one key per
    /// row. Plan ids (names here) are separated by `,` inside a quoted field, or
    /// by `;`. Rows that cannot be imported are warnings; with `fail_on_warnings`
    /// nothing is imported if there is one.
    pub fn import_csv(&mut self, text: &str, fail_on_warnings: bool) -> Result<Imported, ApiError> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = rdr
            .headers()
            .map_err(|e| ApiError::bad(format!("CSV header: {e}")))?
            .clone();
        let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let Some(key_col) = col("key") else {
            return Err(ApiError::bad(
                "CSV header must name a `key` column (key,name,description,enabled,usageplanIds)",
            ));
        };
        for h in headers.iter() {
            if !["key", "name", "description", "enabled", "usageplanids"]
                .contains(&h.to_ascii_lowercase().as_str())
            {
                return Err(ApiError::bad(format!(
                    "unknown CSV column {h:?}: expected key,name,description,enabled,usageplanIds"
                )));
            }
        }
        let (name_col, desc_col, en_col, plans_col) = (
            col("name"),
            col("description"),
            col("enabled"),
            col("usageplanIds"),
        );
        let mut out = Imported::default();
        let mut rows = Vec::new();
        let mut values = HashSet::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    out.warnings.push(format!("line {line}: {e}"));
                    continue;
                }
            };
            let field = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_owned();
            let value = field(Some(key_col));
            if !valid_key_value(&value) {
                out.warnings.push(format!(
                    "line {line}: key must be 20 to 128 letters and digits"
                ));
                continue;
            }
            let hash = keys::hash(value.as_bytes());
            if let Some(id) = self.by_hash.get(&hash) {
                out.warnings.push(format!(
                    "line {line}: an API key with this value exists: {id}"
                ));
                continue;
            }
            if !values.insert(hash) {
                out.warnings.push(format!(
                    "line {line}: the same key appears earlier in the file"
                ));
                continue;
            }
            let enabled = match field(en_col).to_ascii_lowercase().as_str() {
                "" | "true" => true,
                "false" => false,
                other => {
                    out.warnings.push(format!(
                        "line {line}: enabled must be true or false, not {other:?}"
                    ));
                    continue;
                }
            };
            let plans: Vec<String> = field(plans_col)
                .split([',', ';'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if let Err(e) = self.check_plans(&plans) {
                out.warnings.push(format!("line {line}: {}", e.message));
                continue;
            }
            let name = field(name_col);
            if name.len() > 1024 {
                out.warnings.push(format!(
                    "line {line}: name must be at most 1,024 characters"
                ));
                continue;
            }
            rows.push((value, name, field(desc_col), enabled, plans));
        }
        if fail_on_warnings && !out.warnings.is_empty() {
            return Err(ApiError::bad(format!(
                "nothing imported: {}",
                out.warnings.join("; ")
            )));
        }
        let mut defs = Vec::with_capacity(rows.len());
        for (value, name, description, enabled, plans) in rows {
            let hash = keys::hash(value.as_bytes());
            let id = self.new_key_id();
            let def = KeyDef {
                id: id.clone(),
                name: if name.is_empty() { id.clone() } else { name },
                description,
                enabled,
                plans,
                created_s: now_s(),
                hash: hex(&hash),
            };
            self.by_hash.insert(hash, id.clone());
            self.keys.insert(id.clone(), def.clone());
            out.ids.push(id);
            defs.push(def);
        }
        self.store.put_keys(&defs)?;
        self.rebuild();
        Ok(out)
    }
}
