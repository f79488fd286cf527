//! Calls to AWS from the worker: the Lambda Invoke API (`lambda` with
//! `function_arn`) and the service actions of `aws` integrations (HTTP API
//! integration subtypes), SigV4-signed, over a connection of this worker.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::http::error::GatewayError;
use crate::http::sigv4::Credentials;
use crate::upstream::connect::Dial;
use crate::upstream::mapping::Expr;
use crate::upstream::target::Endpoint;

/// The largest AWS answer read (Lambda's 6 MB response, and room for its head).
const MAX_ANSWER: usize = 6 * 1024 * 1024 + 64 * 1024;

/// Where and as whom an AWS call goes.
#[derive(Debug)]
pub struct AwsEndpoint {
    pub endpoint: Endpoint,
    pub region: String,
    /// The signing name (`lambda`, `sqs`, `events`, `kinesis`, `states`).
    pub service: &'static str,
    pub creds: Credentials,
    /// The endpoint URL's path (usually empty), before the API's own.
    pub base_path: String,
}

/// An AWS answer.
#[derive(Debug)]
pub struct AwsAnswer {
    pub status: u16,
    /// Names lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl AwsAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One signed call: `POST`s `body` to `path` with `headers`; the answer, or why not.
pub async fn call(
    dial: &Dial<'_>,
    ep: &AwsEndpoint,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<AwsAnswer, GatewayError> {
    match monoio::time::timeout(timeout, exchange(dial, ep, path, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::IntegrationTimeout),
    }
}

async fn exchange(
    dial: &Dial<'_>,
    ep: &AwsEndpoint,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<AwsAnswer, GatewayError> {
    let full_path = format!("{}{path}", ep.base_path);
    let mut all: Vec<(String, String)> = vec![("host".into(), ep.endpoint.host_header.to_string())];
    all.extend(headers.iter().cloned());
    let signed = crate::http::sigv4::sign(
        &ep.creds,
        &ep.region,
        ep.service,
        "POST",
        &full_path,
        None,
        &all,
        body,
        crate::clock::unix_ms() / 1000,
    );
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(full_path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in all.iter().chain(signed.iter()) {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    let (status, headers, body) =
        crate::upstream::connect::exchange(dial, &ep.endpoint, &out, MAX_ANSWER)
            .await
            .map_err(|f| match f {
                crate::upstream::connect::Failed::Connect(e) => e,
                crate::upstream::connect::Failed::Other(why) => {
                    tracing::warn!(service = ep.service, reason = why, "AWS call failed");
                    GatewayError::UpstreamFailed(match why {
                        "cannot send" => "cannot send to AWS",
                        "the answer is too large" => "AWS's answer is too large",
                        "bad answer" => "bad answer from AWS",
                        _ => "AWS closed without answering",
                    })
                }
            })?;
    Ok(AwsAnswer {
        status,
        headers,
        body,
    })
}

/// An HTTP API integration subtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subtype {
    SqsSendMessage,
    SqsReceiveMessage,
    SqsDeleteMessage,
    EventBridgePutEvents,
    KinesisPutRecord,
    StepFunctionsStartExecution,
}

/// How a parameter's value goes into the action's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    /// A list: a JSON array, or comma-separated text.
    List,
    /// JSON as it is (an object, say), or text parsed as JSON.
    Json,
    /// Bytes, base64-encoded on the wire (Kinesis `Data`).
    Blob,
}

impl Subtype {
    pub const ALL: [Subtype; 6] = [
        Subtype::SqsSendMessage,
        Subtype::SqsReceiveMessage,
        Subtype::SqsDeleteMessage,
        Subtype::EventBridgePutEvents,
        Subtype::KinesisPutRecord,
        Subtype::StepFunctionsStartExecution,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SqsSendMessage => "SQS-SendMessage",
            Self::SqsReceiveMessage => "SQS-ReceiveMessage",
            Self::SqsDeleteMessage => "SQS-DeleteMessage",
            Self::EventBridgePutEvents => "EventBridge-PutEvents",
            Self::KinesisPutRecord => "Kinesis-PutRecord",
            Self::StepFunctionsStartExecution => "StepFunctions-StartExecution",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The signing name and endpoint prefix.
    pub fn service(self) -> &'static str {
        match self {
            Self::SqsSendMessage | Self::SqsReceiveMessage | Self::SqsDeleteMessage => "sqs",
            Self::EventBridgePutEvents => "events",
            Self::KinesisPutRecord => "kinesis",
            Self::StepFunctionsStartExecution => "states",
        }
    }

    /// `X-Amz-Target` and the JSON protocol's content type.
    pub fn target(self) -> (&'static str, &'static str) {
        match self {
            Self::SqsSendMessage => ("AmazonSQS.SendMessage", "application/x-amz-json-1.0"),
            Self::SqsReceiveMessage => ("AmazonSQS.ReceiveMessage", "application/x-amz-json-1.0"),
            Self::SqsDeleteMessage => ("AmazonSQS.DeleteMessage", "application/x-amz-json-1.0"),
            Self::EventBridgePutEvents => ("AWSEvents.PutEvents", "application/x-amz-json-1.1"),
            Self::KinesisPutRecord => ("Kinesis_20131202.PutRecord", "application/x-amz-json-1.1"),
            Self::StepFunctionsStartExecution => (
                "AWSStepFunctions.StartExecution",
                "application/x-amz-json-1.0",
            ),
        }
    }

    /// The parameters AWS documents for the subtype: (name, kind, required).
    pub fn parameters(self) -> &'static [(&'static str, Kind, bool)] {
        use Kind::*;
        match self {
            Self::SqsSendMessage => &[
                ("QueueUrl", Text, true),
                ("MessageBody", Text, true),
                ("DelaySeconds", Int, false),
                ("MessageAttributes", Json, false),
                ("MessageDeduplicationId", Text, false),
                ("MessageGroupId", Text, false),
                ("MessageSystemAttributes", Json, false),
                ("Region", Text, false),
            ],
            Self::SqsReceiveMessage => &[
                ("QueueUrl", Text, true),
                ("AttributeNames", List, false),
                ("MaxNumberOfMessages", Int, false),
                ("MessageAttributeNames", List, false),
                ("ReceiveRequestAttemptId", Text, false),
                ("VisibilityTimeout", Int, false),
                ("WaitTimeSeconds", Int, false),
                ("Region", Text, false),
            ],
            Self::SqsDeleteMessage => &[
                ("QueueUrl", Text, true),
                ("ReceiptHandle", Text, true),
                ("Region", Text, false),
            ],
            Self::EventBridgePutEvents => &[
                ("Detail", Text, true),
                ("DetailType", Text, true),
                ("Source", Text, true),
                ("Time", Text, false),
                ("EventBusName", Text, false),
                ("Resources", List, false),
                ("TraceHeader", Text, false),
                ("Region", Text, false),
            ],
            Self::KinesisPutRecord => &[
                ("StreamName", Text, false),
                ("StreamARN", Text, false),
                ("Data", Blob, true),
                ("PartitionKey", Text, true),
                ("SequenceNumberForOrdering", Text, false),
                ("ExplicitHashKey", Text, false),
                ("Region", Text, false),
            ],
            Self::StepFunctionsStartExecution => &[
                ("StateMachineArn", Text, true),
                ("Name", Text, false),
                ("Input", Text, false),
                ("TraceHeader", Text, false),
                ("Region", Text, false),
            ],
        }
    }

    /// A parameter's name in the action's JSON: Step Functions' API spells its
    /// members in lower camel case (`stateMachineArn`), the others as written.
    fn wire_name(self, name: &str) -> String {
        match self {
            Self::StepFunctionsStartExecution => {
                let mut c = name.chars();
                c.next()
                    .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
            _ => name.to_owned(),
        }
    }

    /// The action's JSON body from the evaluated parameters (`Region` is the
    /// integration's, not the body's); `Err`: a value of the wrong kind.
    pub fn body(
        self,
        values: &BTreeMap<&'static str, serde_json::Value>,
    ) -> Result<Vec<u8>, String> {
        use serde_json::Value;
        let mut obj = serde_json::Map::new();
        for (name, kind, required) in self.parameters() {
            if *name == "Region" {
                continue;
            }
            let Some(v) = values.get(name) else {
                if *required {
                    return Err(format!("{name} is missing"));
                }
                continue;
            };
            let as_text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let out = match kind {
                Kind::Text => Value::String(as_text(v)),
                Kind::Int => {
                    let n = match v {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => s.trim().parse().ok(),
                        _ => None,
                    };
                    Value::from(n.ok_or_else(|| format!("{name} must be a whole number"))?)
                }
                Kind::List => match v {
                    Value::Array(_) => v.clone(),
                    other => Value::Array(
                        as_text(other)
                            .split(',')
                            .map(|s| Value::String(s.trim().to_owned()))
                            .filter(|s| s.as_str() != Some(""))
                            .collect(),
                    ),
                },
                Kind::Json => match v {
                    Value::String(s) => {
                        serde_json::from_str(s).map_err(|_| format!("{name} must be JSON"))?
                    }
                    other => other.clone(),
                },
                Kind::Blob => {
                    use base64::Engine;
                    Value::String(
                        base64::engine::general_purpose::STANDARD.encode(as_text(v).as_bytes()),
                    )
                }
            };
            obj.insert(self.wire_name(name), out);
        }
        let doc = match self {
            Self::EventBridgePutEvents => serde_json::json!({ "Entries": [Value::Object(obj)] }),
            _ => Value::Object(obj),
        };
        Ok(doc.to_string().into_bytes())
    }
}

/// An `aws` integration as compiled.
#[derive(Debug)]
pub struct AwsAction {
    pub subtype: Subtype,
    pub endpoint: AwsEndpoint,
    pub parameters: Vec<(&'static str, Expr)>,
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_each_action() {
        let v = |pairs: &[(&'static str, serde_json::Value)]| {
            pairs.iter().cloned().collect::<BTreeMap<_, _>>()
        };
        let b = Subtype::SqsSendMessage
            .body(&v(&[
                ("QueueUrl", "http://q".into()),
                ("MessageBody", "hi".into()),
                ("DelaySeconds", "3".into()),
            ]))
            .unwrap();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"DelaySeconds":3,"MessageBody":"hi","QueueUrl":"http://q"}"#
        );
        assert!(Subtype::SqsSendMessage
            .body(&v(&[("QueueUrl", "x".into())]))
            .unwrap_err()
            .contains("MessageBody"));
        let b = Subtype::EventBridgePutEvents
            .body(&v(&[
                ("Detail", r#"{"a":1}"#.into()),
                ("DetailType", "t".into()),
                ("Source", "s".into()),
                ("Resources", "a, b".into()),
            ]))
            .unwrap();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"Entries":[{"Detail":"{\"a\":1}","DetailType":"t","Resources":["a","b"],"Source":"s"}]}"#
        );
        let b = Subtype::KinesisPutRecord
            .body(&v(&[
                ("Data", "hello".into()),
                ("PartitionKey", "k".into()),
            ]))
            .unwrap();
        assert!(String::from_utf8(b)
            .unwrap()
            .contains(r#""Data":"aGVsbG8=""#));
        assert_eq!(
            Subtype::parse("SQS-SendMessage"),
            Some(Subtype::SqsSendMessage)
        );
        assert_eq!(Subtype::parse("SQS-Nothing"), None);
    }
}
