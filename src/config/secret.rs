//! Secrets in the config: a value, or the environment variable that holds it.

use serde::Deserialize;

/// A secret: `{ env: NAME }`, read from the environment at load time, or the value
/// itself (which the contract advises against).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SecretFile {
    Env(EnvRef),
    Value(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvRef {
    pub env: String,
}
