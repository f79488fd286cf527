//! API keys: stored as SHA-256 hashes, looked up by the hash of the `x-api-key`
//! header, and tied to the stages of the usage plans they belong to.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::plan::{RouteId, StageId};
use crate::quota::QuotaId;
use crate::throttle::ThrottleId;

pub type KeyHash = [u8; 32];

pub fn hash(value: &[u8]) -> KeyHash {
    Sha256::digest(value).into()
}

/// Equality that takes the same time wherever the inputs differ.
fn ct_eq(a: &KeyHash, b: &KeyHash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug)]
pub struct KeyEntry {
    pub name: String,
    pub hash: KeyHash,
    pub enabled: bool,
    /// The stages this key may call, each with its plan's per-key limits.
    pub stages: Vec<(StageId, PlanLimits)>,
}

/// A usage plan's limits for one key on one stage: its own throttle bucket, its own
/// buckets for the plan's per-route throttles, and its quota.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanLimits {
    pub throttle: Option<ThrottleId>,
    pub routes: Box<[(RouteId, ThrottleId)]>,
    pub quota: Option<QuotaId>,
}

impl PlanLimits {
    pub fn route_throttle(&self, route: RouteId) -> Option<ThrottleId> {
        self.routes
            .iter()
            .find(|(r, _)| *r == route)
            .map(|(_, t)| *t)
    }
}

/// Why a keyed request was refused (all answer 403; the log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Missing,
    Unknown,
    Disabled,
    NotInPlan,
}

#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<KeyHash, usize>,
    pub keys: Vec<KeyEntry>,
}

impl KeyTable {
    /// Adds a key; `false` if a key with the same value is already there.
    pub fn insert(&mut self, entry: KeyEntry) -> bool {
        if self.by_hash.contains_key(&entry.hash) {
            return false;
        }
        self.by_hash.insert(entry.hash, self.keys.len());
        self.keys.push(entry);
        true
    }

    /// Checks the request's `x-api-key` for `stage`; on success, the limits of the
    /// key's plan for that stage.
    pub fn check(
        &self,
        headers: &[httparse::Header<'_>],
        stage: StageId,
    ) -> Result<&PlanLimits, KeyRefusal> {
        let value = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("x-api-key"))
            .map(|h| h.value)
            .filter(|v| !v.is_empty())
            .ok_or(KeyRefusal::Missing)?;
        let h = hash(value);
        let entry = self
            .by_hash
            .get(&h)
            .map(|&i| &self.keys[i])
            .filter(|e| ct_eq(&e.hash, &h))
            .ok_or(KeyRefusal::Unknown)?;
        if !entry.enabled {
            return Err(KeyRefusal::Disabled);
        }
        entry
            .stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, l)| l)
            .ok_or(KeyRefusal::NotInPlan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> KeyTable {
        let mut t = KeyTable::default();
        assert!(t.insert(KeyEntry {
            name: "alice".into(),
            hash: hash(b"alice-key"),
            enabled: true,
            stages: vec![(
                1,
                PlanLimits {
                    throttle: Some(7),
                    ..PlanLimits::default()
                },
            )],
        }));
        assert!(t.insert(KeyEntry {
            name: "bob".into(),
            hash: hash(b"bob-key"),
            enabled: false,
            stages: vec![(1, PlanLimits::default())],
        }));
        assert!(!t.insert(KeyEntry {
            name: "again".into(),
            hash: hash(b"alice-key"),
            enabled: true,
            stages: vec![],
        }));
        t
    }

    fn header<'a>(name: &'a str, value: &'a [u8]) -> [httparse::Header<'a>; 1] {
        [httparse::Header { name, value }]
    }

    #[test]
    fn keys_are_checked_by_hash_state_and_stage() {
        let t = table();
        assert_eq!(
            t.check(&header("X-Api-Key", b"alice-key"), 1)
                .map(|l| l.throttle),
            Ok(Some(7))
        );
        assert_eq!(
            t.check(&header("x-api-key", b"alice-key"), 2),
            Err(KeyRefusal::NotInPlan)
        );
        assert_eq!(
            t.check(&header("x-api-key", b"bob-key"), 1),
            Err(KeyRefusal::Disabled)
        );
        assert_eq!(
            t.check(&header("x-api-key", b"nope"), 1),
            Err(KeyRefusal::Unknown)
        );
        assert_eq!(
            t.check(&header("x-api-key", b""), 1),
            Err(KeyRefusal::Missing)
        );
        assert_eq!(
            t.check(&header("accept", b"*/*"), 1),
            Err(KeyRefusal::Missing)
        );
    }
}
