//! The ids every layer passes around: indexes into the `Plan`'s vectors and into
//! per-shard state. Plain integers and byte arrays, so a module that only needs to
//! name a stage or a request does not import the module that owns it.

/// Index of a stage in `Plan::stages`.
pub type StageId = usize;

/// Index of a route in its stage's `StagePlan::routes`.
pub type RouteId = usize;

/// A request id: 16 URL-safe base64 characters, unique per process start, worker and
/// request (AWS's `apigw-requestid` is a short opaque token of the same kind).
pub type RequestId = [u8; 16];

/// Where each shard keeps its local part of a key's bucket or quota (unspent tokens,
/// an unspent lease): an index into a per-shard vector, and the generation of that
/// index, bumped each time the control plane gives it to another bucket, so a shard
/// never spends what it held for a deleted key on the key that reused the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub index: u32,
    pub gen: u32,
}

/// Index of a throttle in `Plan::throttles`.
pub type ThrottleId = usize;
