//! Cluster mode: taking the definitions Redis holds (every node's changes) as
//! this node's, in place of its own.

use std::sync::atomic::Ordering;

use crate::control::registry::*;

impl Registry {
    /// The keyring's publisher (shared with every plan's workers).
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Cluster mode: every key's throttle buckets by name (the tokens thread
    /// refills their reservoirs from Redis).
    pub fn key_buckets(&self) -> KeyBuckets {
        Arc::clone(&self.key_buckets)
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

    /// Cluster mode, the store writer's loop: asks Redis for more of each quota
    /// this node is running low on (under one batch left) or a worker ran short
    /// of, a batch at a time (`limit / 64`, 1 to 1,000); Redis never grants past
    /// `limit` over all nodes. A node so holds at most 2 batches beyond what its
    /// workers leased, and its workers at most that in leases: a node killed
    /// with `-9` loses at most `2 × batch × (workers + 1)` of the period. Redis away
    /// with `fail_open`: the node admits on its own up to `limit` and adds its
    /// count to Redis when it is back.
    pub fn top_up_grants(&mut self) {
        let Some(m) = self.store.mirror().cloned() else {
            return;
        };
        let now = now_s();
        let mut reachable = true;
        for ((key, plan), b) in &self.bindings {
            let Some((_, q)) = &b.quota else { continue };
            let Some(g) = &q.grant else { continue };
            let (period, _) = q.period.at(now);
            let (limit, granted, used) = (q.limit(), g.granted(period), q.used(period));
            let batch = (limit / 64).clamp(1, 1000);
            let offline = g.offline.load(Ordering::Acquire);
            let wanted = g.wanted.swap(false, Ordering::AcqRel);
            let low = granted.saturating_sub(used) < batch;
            if !(wanted || low || offline) || !g.may_grant(period) || (granted >= limit && !offline)
            {
                continue;
            }
            let (counter, ttl_ms) = counter_of(&m, key, plan, q, now);
            if !reachable {
                if m.fail_open {
                    g.offline.store(true, Ordering::Release);
                }
                g.answers.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            if offline {
                // Back from fail_open: what the node admitted beyond its grant
                // counts in Redis too.
                let over = used.saturating_sub(granted);
                match m.add_count(&counter, over as i64, ttl_ms) {
                    Ok(()) => {
                        if over > 0 {
                            g.add(period, over);
                        }
                        g.offline.store(false, Ordering::Release);
                        tracing::info!(key = %key, plan = %plan, replayed = over, "quota counted in redis again");
                    }
                    Err(_) => {
                        reachable = false;
                        continue;
                    }
                }
            }
            let want = batch.min(limit.saturating_sub(g.granted(period)));
            match m.grant(&counter, limit, want, ttl_ms) {
                Ok((n, total)) => {
                    g.add(period, n);
                    g.saw_total(period, total);
                }
                Err(_) => {
                    reachable = false;
                    if m.fail_open {
                        g.offline.store(true, Ordering::Release);
                    }
                    g.answers.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Cluster mode, at shutdown: hands back to Redis what this node was granted
    /// and did not use, so other nodes can.
    pub fn return_grants(&self) {
        let Some(m) = self.store.mirror() else { return };
        let now = now_s();
        for ((key, plan), b) in &self.bindings {
            let Some((_, q)) = &b.quota else { continue };
            let Some(g) = &q.grant else { continue };
            let (period, _) = q.period.at(now);
            let unused = g.granted(period).saturating_sub(q.used(period));
            if unused > 0 && !g.offline.load(Ordering::Acquire) {
                let (counter, ttl_ms) = counter_of(m, key, plan, q, now);
                if let Err(e) = m.add_count(&counter, -(unused as i64), ttl_ms) {
                    tracing::warn!(key = %key, plan = %plan, unused, error = %format!("{e:#}"), "unused quota grant not handed back");
                }
            }
        }
    }
}

/// A quota's counter in Redis for the period holding `now`, and how long it
/// lives (an hour past the period's end).
pub(crate) fn counter_of(
    m: &crate::control::redis::Shared,
    key: &str,
    plan: &str,
    q: &Quota,
    now: u64,
) -> (String, u64) {
    let (period, next) = q.period.at(now);
    (
        m.quota_key(key, plan, period_kind(q.period), period),
        (next.saturating_sub(now) + 3600) * 1000,
    )
}
