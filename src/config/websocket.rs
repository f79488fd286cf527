//! What WebSocket APIs add to the config: a stage's connection limits.

use serde::Deserialize;

/// `stages[].limits` of a WebSocket API (AWS's defaults when absent).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, Hash)]
#[serde(deny_unknown_fields)]
pub struct WsLimitsFile {
    #[serde(default)]
    pub max_message_bytes: Option<u64>,
    #[serde(default)]
    pub max_frame_bytes: Option<u64>,
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    #[serde(default)]
    pub max_duration_s: Option<u64>,
}
