//! Usage plans: create, change, delete, the keys in each, quotas left, and usage
//! reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::UsagePlanFile;
use crate::control::registry::*;
use crate::policy::quota::Quota;
use crate::policy::usage::{now_s, resolve, KeyDef, Resolved};

impl Registry {
    // ---- usage plans ----

    pub fn plans(&self) -> Vec<&UsagePlanFile> {
        self.plans.values().map(|(d, _)| d).collect()
    }

    pub fn plan(&self, name: &str) -> Result<&UsagePlanFile, ApiError> {
        self.plans
            .get(name)
            .map(|(d, _)| d)
            .ok_or_else(|| ApiError::not_found("usage plan", name))
    }

    pub(crate) fn resolve(&self, def: &UsagePlanFile) -> Result<Resolved, ApiError> {
        resolve(&self.stages, def).map_err(|e| {
            ApiError::bad(
                e.into_iter()
                    .map(|(p, m)| format!("{p}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }

    pub fn create_plan(&mut self, def: UsagePlanFile) -> Result<UsagePlanFile, ApiError> {
        if self.plans.contains_key(&def.name) {
            return Err(ApiError::conflict(format!(
                "a usage plan named {:?} exists",
                def.name
            )));
        }
        let res = self.resolve(&def)?;
        self.store.put_plan(&def)?;
        self.plans.insert(def.name.clone(), (def.clone(), res));
        Ok(def)
    }

    /// Replaces a plan's stages and limits. Its keys keep their quota counts (the
    /// new limit applies to what they used) unless the period changes; their
    /// buckets start full.
    pub fn update_plan(
        &mut self,
        name: &str,
        def: UsagePlanFile,
    ) -> Result<UsagePlanFile, ApiError> {
        self.plan(name)?;
        if def.name != name {
            return Err(ApiError::bad("a usage plan's name cannot change"));
        }
        let res = self.resolve(&def)?;
        // The plan's keys must still be in at most one plan per stage.
        let old = self.plans.insert(name.to_owned(), (def.clone(), res));
        let clash = self
            .keys
            .values()
            .filter(|k| k.plans.iter().any(|p| p == name))
            .find_map(|k| self.check_plans(&k.plans).err());
        if let Some(e) = clash {
            if let Some(old) = old {
                self.plans.insert(name.to_owned(), old);
            }
            return Err(e);
        }
        self.store.put_plan(&def)?;
        // New buckets; quotas carried over where the period is the same.
        let stale: Vec<(String, String)> = self
            .bindings
            .keys()
            .filter(|(_, p)| p == name)
            .cloned()
            .collect();
        for k in stale {
            self.retire(k);
        }
        self.rebuild();
        Ok(def)
    }

    /// Deletes a plan and takes its keys out of it.
    pub fn delete_plan(&mut self, name: &str) -> Result<(), ApiError> {
        self.plan(name)?;
        let mut changed = Vec::new();
        for k in self.keys.values_mut() {
            if k.plans.iter().any(|p| p == name) {
                k.plans.retain(|p| p != name);
                changed.push(k.clone());
            }
        }
        self.store.put_keys(&changed)?;
        self.store.delete_plan(name)?;
        self.plans.remove(name);
        self.rebuild();
        Ok(())
    }

    pub fn plan_keys(&self, name: &str) -> Result<Vec<&KeyDef>, ApiError> {
        self.plan(name)?;
        Ok(self
            .keys
            .values()
            .filter(|k| k.plans.iter().any(|p| p == name))
            .collect())
    }

    /// Adds a key to a plan (AWS's CreateUsagePlanKey).
    pub fn attach(&mut self, plan: &str, key_id: &str) -> Result<KeyDef, ApiError> {
        self.plan(plan)?;
        let mut def = self.key(key_id)?.clone();
        if def.plans.iter().any(|p| p == plan) {
            return Err(ApiError::conflict(format!(
                "API key {key_id} is already in usage plan {plan:?}"
            )));
        }
        def.plans.push(plan.to_owned());
        self.check_plans(&def.plans)?;
        self.store.put_key(&def)?;
        self.keys.insert(key_id.to_owned(), def.clone());
        self.rebuild();
        Ok(def)
    }

    pub fn detach(&mut self, plan: &str, key_id: &str) -> Result<(), ApiError> {
        self.plan(plan)?;
        let mut def = self.key(key_id)?.clone();
        if !def.plans.iter().any(|p| p == plan) {
            return Err(ApiError::not_found(
                &format!("key of usage plan {plan:?}"),
                key_id,
            ));
        }
        def.plans.retain(|p| p != plan);
        self.store.put_key(&def)?;
        self.keys.insert(key_id.to_owned(), def);
        self.rebuild();
        Ok(())
    }

    // ---- usage ----

    pub(crate) fn quota_of(&self, plan: &str, key_id: &str) -> Result<Arc<Quota>, ApiError> {
        self.bindings
            .get(&(key_id.to_owned(), plan.to_owned()))
            .and_then(|b| b.quota.as_ref())
            .map(|(_, q)| Arc::clone(q))
            .ok_or_else(|| ApiError::not_found(&format!("key of usage plan {plan:?}"), key_id))
    }

    /// Sets what is left of a key's quota for the current period (AWS's UpdateUsage).
    pub fn set_remaining(
        &mut self,
        plan: &str,
        key_id: &str,
        remaining: u64,
    ) -> Result<(), ApiError> {
        self.plan(plan)?;
        self.key(key_id)?;
        let q = self.quota_of(plan, key_id)?;
        if !q.limited {
            return Err(ApiError::bad(format!(
                "usage plan {plan:?} has no quota to reset"
            )));
        }
        let (period, _) = q.period.at(now_s());
        let remaining = remaining.min(q.limit());
        // Flush first so that what was served before the reset counts as used today;
        // the reset itself changes what is left, not what was used.
        self.flush()?;
        q.set_remaining(period, remaining);
        if let (Some(m), Some(g)) = (self.store.mirror(), &q.grant) {
            // Cluster mode: the count over all nodes is what the reset says; this
            // node is granted anew from it. (Other nodes may still spend what
            // they were granted before: at most two batches each.)
            let (counter, ttl_ms) =
                crate::control::registry::shared::counter_of(m, key_id, plan, &q, now_s());
            m.set_count(&counter, q.limit() - remaining, ttl_ms)
                .map_err(|e| ApiError::new(503, format!("redis: {e:#}")))?;
            g.reset(period, q.used(period));
        }
        self.saved.insert(
            (key_id.to_owned(), plan.to_owned()),
            Saved {
                period,
                spent: q.spent(period),
            },
        );
        self.flush()?;
        Ok(())
    }

    /// AWS's usage report: for each key of the plan (or `key_id`), one
    /// `[used, remaining]` per day from `start` to `end` (days since 1970-01-01).
    /// `remaining` is `None` for a plan without a quota.
    pub fn usage(
        &mut self,
        plan: &str,
        key_id: Option<&str>,
        start: u64,
        end: u64,
    ) -> Result<Report, ApiError> {
        self.plan(plan)?;
        self.flush()?;
        self.store.send_usage();
        let ids: Vec<String> = match key_id {
            Some(id) => {
                self.key(id)?;
                vec![id.to_owned()]
            }
            None => self
                .plan_keys(plan)?
                .into_iter()
                .map(|k| k.id.clone())
                .collect(),
        };
        let quota = self.plans[plan].0.quota;
        let mut out = BTreeMap::new();
        for id in ids {
            let days = self.store.usage(plan, &id, start, end)?;
            let mut row = Vec::new();
            let mut last: Option<(u64, Option<u64>)> = None; // (period, remaining)
            for day in start..=end {
                let period = quota.map(|q| q.period.at(day * DAY_S).0);
                let found = days.iter().find(|d| d.0 == day);
                let entry = match found {
                    Some(&(_, used, remaining)) => (used, remaining),
                    None => {
                        // Nothing served that day: what was left carries over
                        // within a period, and a new period starts full.
                        let remaining = match (quota, last) {
                            (None, _) => None,
                            (Some(_), Some((p, r))) if Some(p) == period => r,
                            (Some(q), _) => Some(q.limit),
                        };
                        (0, remaining)
                    }
                };
                if let Some(p) = period {
                    last = Some((p, entry.1));
                }
                row.push(entry);
            }
            out.insert(id, row);
        }
        Ok(out)
    }
}
