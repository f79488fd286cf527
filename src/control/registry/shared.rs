//! Cluster mode: taking the definitions Redis holds (every node's changes) as
//! this node's, in place of its own.

use crate::control::registry::*;

impl Registry {
    /// The keyring's publisher (shared with every plan's workers).
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

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

    /// Writes everything this node holds into Redis where Redis lacks it: after
    /// Redis lost its data (a restart without persistence), so the cluster's keys,
    /// plans and stages are not lost with it.
    pub fn reseed(&self) -> anyhow::Result<()> {
        let Some(m) = self.store.mirror() else {
            return Ok(());
        };
        for k in self.keys.values() {
            m.seed("keys", &k.id, &serde_json::to_string(k)?)?;
        }
        for (def, _) in self.plans.values() {
            m.seed("plans", &def.name, &serde_json::to_string(def)?)?;
        }
        for a in self.access.made.values() {
            m.seed("access_keys", &a.id, &serde_json::to_string(a)?)?;
        }
        for (api, stage, p) in self.store.stages()? {
            if let Some(id) = &p.deployment_id {
                if let Some(d) = self.store.deployment(&api, id)? {
                    m.seed(
                        "deployments",
                        &serde_json::to_string(&(&api, id))?,
                        &serde_json::to_string(&d)?,
                    )?;
                }
            }
            m.seed(
                "stages",
                &serde_json::to_string(&(&api, &stage))?,
                &serde_json::to_string(&p)?,
            )?;
        }
        Ok(())
    }
}
