//! Cluster mode: taking the definitions Redis holds (every node's changes) as
//! this node's, in place of its own.

use crate::control::registry::*;

impl Registry {
    /// The plan generation the registry's stages come from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces the keys, usage plans and management-API access keys with the
    /// shared ones, and publishes the keyring. Bindings whose plan changed are
    /// rebuilt (keeping their quota counts); a plan that does not resolve against
    /// this node's stages is set aside with a warning, as at start.
    pub fn adopt(
        &mut self,
        keys: Vec<KeyDef>,
        plans: Vec<UsagePlanFile>,
        access: Vec<crate::policy::sigv4::AccessKey>,
    ) {
        let mut next = BTreeMap::new();
        for def in plans {
            match resolve(&self.stages, &def) {
                Ok(res) => {
                    next.insert(def.name.clone(), (def, res));
                }
                Err(errs) => tracing::warn!(
                    plan = %def.name,
                    errors = ?errs,
                    "shared usage plan does not match this node's stages; set aside"
                ),
            }
        }
        let changed: Vec<(String, String)> = self
            .bindings
            .keys()
            .filter(|(_, p)| {
                next.get(p)
                    .map(|x: &(UsagePlanFile, Resolved)| (&x.0, &x.1))
                    != self.plans.get(p).map(|x| (&x.0, &x.1))
            })
            .cloned()
            .collect();
        for k in changed {
            self.retire(k);
        }
        self.plans = next;
        self.keys.clear();
        self.by_hash.clear();
        for key in keys {
            let Some(h) = key.key_hash() else {
                tracing::warn!(key = %key.id, "shared API key has a bad hash; not loaded");
                continue;
            };
            self.by_hash.insert(h, key.id.clone());
            self.keys.insert(key.id.clone(), key);
        }
        let config: HashSet<&str> = self.access.config.iter().map(|k| k.id.as_str()).collect();
        self.access.made = access
            .into_iter()
            .filter(|k| !config.contains(k.id.as_str()))
            .map(|k| (k.id.clone(), k))
            .collect();
        self.publish_access_keys();
        self.publish(false);
    }
}
