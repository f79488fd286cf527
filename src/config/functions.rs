//! `functions[]` (Lambda functions run next to the gateway), the `lambda` and `aws`
//! integrations, and HTTP API parameter mapping, as users write them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::secret::SecretFile;

/// `functions[]`: a function whose runtimes poll the gateway's Lambda Runtime API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionFile {
    pub name: String,
    /// `host:port` the Runtime API listens on (`AWS_LAMBDA_RUNTIME_API`).
    pub runtime_api: String,
    /// Started `concurrency` times and kept running; without it, runtimes started
    /// elsewhere poll `runtime_api`.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (MB; default 128).
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Invocations that may wait for a free runtime (default 100 per runtime).
    #[serde(default)]
    pub queue: Option<u32>,
    /// The working directory of `command` (default: the config file's).
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// `type: lambda`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LambdaFile {
    /// One of `functions[].name`.
    #[serde(default)]
    pub function: Option<String>,
    /// A function in AWS, called through the Lambda Invoke API.
    #[serde(default)]
    pub function_arn: Option<String>,
    #[serde(default)]
    pub payload_format_version: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub credentials: Option<AwsCredentialsFile>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub request_parameters: ParameterMap,
    #[serde(default)]
    pub response_parameters: ResponseParameters,
}

/// `type: aws`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsFile {
    pub subtype: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials: Option<AwsCredentialsFile>,
    #[serde(default)]
    pub parameters: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub request_parameters: ParameterMap,
    #[serde(default)]
    pub response_parameters: ResponseParameters,
}

/// `credentials`: an access key (from the environment, preferably).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentialsFile {
    pub access_key_id: SecretFile,
    pub secret_access_key: SecretFile,
    #[serde(default)]
    pub session_token: Option<SecretFile>,
}

/// `"overwrite:header.x": "$request.path.id"`, and so on.
pub type ParameterMap = BTreeMap<String, String>;

/// Response mappings per status code (`"200": { ... }`).
pub type ResponseParameters = BTreeMap<String, ParameterMap>;
