//! SigV4 access keys: the config's and those made through the management API.

use std::sync::Arc;

use crate::control::registry::*;
use crate::policy::usage::now_s;

/// A new access key through the management API; id and secret are generated
/// when absent.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccessKey {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A random secret in AWS's shape: 40 characters of standard base64 (never a
/// leading `-`, which command lines would take for an option).
fn base64_secret(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
}

impl Registry {
    /// The config's SigV4 keys after a reload (the management API's stay).
    pub fn replace_config_access_keys(&mut self, config: Vec<crate::policy::sigv4::AccessKey>) {
        self.access.config = config;
        self.publish_access_keys();
    }

    /// Takes over the plan's SigV4 key table: the config's keys, then the store's.
    pub fn attach_access_keys(
        &mut self,
        table: Arc<crate::policy::sigv4::KeyTable>,
        config: Vec<crate::policy::sigv4::AccessKey>,
    ) -> anyhow::Result<()> {
        for k in self.store.access_keys()? {
            if config.iter().any(|c| c.id == k.id) {
                tracing::warn!(access_key = %k.id, "an access key in the store has the id of a config key; the config's is used");
                continue;
            }
            self.access.made.insert(k.id.clone(), k);
        }
        self.access.table = Some(table);
        self.access.config = config;
        self.publish_access_keys();
        Ok(())
    }

    pub(crate) fn publish_access_keys(&self) {
        if let Some(t) = &self.access.table {
            t.publish(
                self.access
                    .config
                    .iter()
                    .chain(self.access.made.values())
                    .cloned(),
            );
        }
    }

    pub fn access_keys(&self) -> Vec<&crate::policy::sigv4::AccessKey> {
        self.access
            .config
            .iter()
            .chain(self.access.made.values())
            .collect()
    }

    pub fn create_access_key(
        &mut self,
        new: NewAccessKey,
    ) -> Result<crate::policy::sigv4::AccessKey, ApiError> {
        use crate::policy::sigv4;
        let id = match new.id {
            Some(id) => id,
            None => {
                // AWS's shape: `AKIA` and 16 upper-case letters and digits.
                let mut raw = [0u8; 16];
                getrandom::fill(&mut raw).map_err(|e| ApiError::new(500, e.to_string()))?;
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
                let tail: String = raw
                    .iter()
                    .map(|b| alphabet[(*b & 31) as usize] as char)
                    .collect();
                format!("AKIA{tail}")
            }
        };
        sigv4::check_key_id(&id).map_err(|e| ApiError::new(400, e))?;
        for p in &new.allow {
            sigv4::check_pattern(p).map_err(|e| ApiError::new(400, e))?;
        }
        if self.access_keys().iter().any(|k| k.id == id) {
            return Err(ApiError::new(409, format!("access key {id:?} exists")));
        }
        let secret = match new.secret {
            Some(s) if s.len() >= 16 => s,
            Some(_) => return Err(ApiError::new(400, "a secret is at least 16 characters")),
            None => {
                let mut raw = [0u8; 30];
                getrandom::fill(&mut raw).map_err(|e| ApiError::new(500, e.to_string()))?;
                base64_secret(&raw)
            }
        };
        let key = sigv4::AccessKey {
            id: id.clone(),
            secret,
            allow: new.allow,
            source: "api".into(),
            created_s: now_s(),
        };
        self.store.put_access_key(&key)?;
        self.access.made.insert(id, key.clone());
        self.publish_access_keys();
        Ok(key)
    }

    pub fn delete_access_key(&mut self, id: &str) -> Result<(), ApiError> {
        if self.access.config.iter().any(|k| k.id == id) {
            return Err(ApiError::new(
                409,
                "a config key is removed from the config",
            ));
        }
        if self.access.made.remove(id).is_none() {
            return Err(ApiError::new(404, format!("no access key {id:?}")));
        }
        self.store.delete_access_key(id)?;
        self.publish_access_keys();
        Ok(())
    }
}
