//! Cluster mode's connection to Redis (`store.redis`): where every node keeps the
//! shared definitions (API keys, usage plans, SigV4 access keys) and announces
//! changes. Only control-plane threads call it (the management API through the
//! store, the cluster sync thread); never a worker.
//!
//! Layout, under `key_prefix` and one hash tag (`{defs}`) so a Redis Cluster keeps
//! them in one slot: a hash per kind (`KINDS`; field = id, value = the definition
//! as JSON: API keys by their hash only), `version` (bumped
//! with every change), the `changes` channel (the new version, published), and
//! `nodes` (each node's heartbeat).

// The control plane may share a connection under a mutex (clippy.toml keeps them
// off the request path).
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::ConnectionLike;

use crate::plan::RedisPlan;

/// How long a command may take (connect included) before Redis counts as down.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The kinds of definition shared, each a hash: `deployments` and `stages` are
/// keyed by the JSON of `[api, id]` and `[api, stage]`.
pub const KINDS: [&str; 5] = ["keys", "plans", "access_keys", "deployments", "stages"];

enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }
}

/// The node's handle on the shared state.
pub struct Shared {
    client: Client,
    /// A standalone client of the first URL: subscriptions (a Redis Cluster
    /// delivers a PUBLISH to subscribers on every node).
    subscriber: redis::Client,
    conn: Mutex<Option<Conn>>,
    prefix: String,
    /// This process, in `nodes` and in the logs.
    pub node_id: String,
    pub fail_open: bool,
    /// Redis answered the last command (state changes are logged once).
    up: AtomicBool,
    /// Round trips to Redis (a pipeline or a script is one): `/metrics`.
    pub round_trips: std::sync::atomic::AtomicU64,
    /// Nodes alive at the last heartbeat round (each node's share of a throttle
    /// while Redis is away).
    pub alive: std::sync::atomic::AtomicU32,
    /// Seeding the config's definitions failed (Redis away at start or reload):
    /// the sync thread seeds them before it adopts anything from Redis.
    pub needs_seed: AtomicBool,
}

fn info(url: &str, password: Option<&str>) -> redis::RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let mut info = url.into_connection_info()?;
    if let Some(p) = password {
        let settings = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

impl Shared {
    pub fn new(plan: &RedisPlan) -> anyhow::Result<Self> {
        let password = plan.password.as_deref();
        let infos = plan
            .urls
            .iter()
            .map(|u| info(u, password))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let client = if plan.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(infos.clone())
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT);
            if let Some(p) = password {
                b = b.password(p);
            }
            Client::Cluster(b.build()?)
        } else {
            Client::Single(redis::Client::open(infos[0].clone())?)
        };
        let mut id = [0u8; 6];
        let _ = getrandom::fill(&mut id);
        let node_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            client,
            subscriber: redis::Client::open(infos[0].clone())?,
            conn: Mutex::new(None),
            prefix: plan.key_prefix.clone(),
            node_id,
            fail_open: plan.fail_open,
            up: AtomicBool::new(true),
            round_trips: std::sync::atomic::AtomicU64::new(0),
            alive: std::sync::atomic::AtomicU32::new(1),
            needs_seed: AtomicBool::new(false),
        })
    }

    /// A key name under the prefix and the hash tag.
    pub fn key(&self, name: &str) -> String {
        format!("{}{{defs}}:{name}", self.prefix)
    }

    /// Runs `f` on the shared connection (connecting first when there is none);
    /// an error drops the connection, so the next call connects anew.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> anyhow::Result<T> {
        let mut guard = crate::lock(&self.conn);
        if guard.is_none() {
            let made = match &self.client {
                Client::Single(c) => c.get_connection_with_timeout(TIMEOUT).map(|c| {
                    let _ = c.set_read_timeout(Some(TIMEOUT));
                    let _ = c.set_write_timeout(Some(TIMEOUT));
                    Conn::Single(c)
                }),
                Client::Cluster(c) => c.get_connection().map(|c| Conn::Cluster(Box::new(c))),
            };
            match made {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    self.went(false, &e);
                    return Err(anyhow::anyhow!("redis: {e}"));
                }
            }
        }
        let Some(conn) = guard.as_mut() else {
            return Err(anyhow::anyhow!("redis: no connection"));
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match f(conn.like()) {
            Ok(v) => {
                self.went(true, &"");
                Ok(v)
            }
            Err(e) => {
                *guard = None;
                self.went(false, &e);
                Err(anyhow::anyhow!("redis: {e}"))
            }
        }
    }

    /// Logs a change of Redis's state, once per change.
    fn went(&self, up: bool, why: &dyn std::fmt::Display) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!(node = %self.node_id, "redis reachable again");
            } else {
                tracing::warn!(node = %self.node_id, error = %why, "redis unreachable");
            }
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Writes one definition and announces the change.
    pub fn put(&self, kind: &str, id: &str, json: &str) -> anyhow::Result<()> {
        let (hash, version, channel) = (self.key(kind), self.key("version"), self.key("changes"));
        self.with(|c| {
            redis::cmd("HSET").arg(&hash).arg(id).arg(json).exec(c)?;
            announce(c, &version, &channel)
        })
    }

    /// Writes one definition unless the hash has it already (the config's keys and
    /// plans: run-time changes made through any node stay).
    pub fn seed(&self, kind: &str, id: &str, json: &str) -> anyhow::Result<()> {
        let (hash, version, channel) = (self.key(kind), self.key("version"), self.key("changes"));
        self.with(|c| {
            let added: i64 = redis::cmd("HSETNX").arg(&hash).arg(id).arg(json).query(c)?;
            if added == 1 {
                announce(c, &version, &channel)?;
            }
            Ok(())
        })
    }

    pub fn delete(&self, kind: &str, id: &str) -> anyhow::Result<()> {
        let (hash, version, channel) = (self.key(kind), self.key("version"), self.key("changes"));
        self.with(|c| {
            redis::cmd("HDEL").arg(&hash).arg(id).exec(c)?;
            announce(c, &version, &channel)
        })
    }

    /// Every definition of a kind: (id, JSON).
    pub fn all(&self, kind: &str) -> anyhow::Result<Vec<(String, String)>> {
        let hash = self.key(kind);
        self.with(|c| redis::cmd("HGETALL").arg(&hash).query(c))
    }

    /// The shared state's version (0 before any change).
    pub fn version(&self) -> anyhow::Result<u64> {
        let key = self.key("version");
        self.with(|c| {
            let v: Option<u64> = redis::cmd("GET").arg(&key).query(c)?;
            Ok(v.unwrap_or(0))
        })
    }

    /// Records this node's heartbeat (JSON), and drops nodes silent for a minute.
    pub fn heartbeat(&self, json: &str) -> anyhow::Result<()> {
        let key = self.key("nodes");
        self.with(|c| {
            redis::cmd("HSET")
                .arg(&key)
                .arg(&self.node_id)
                .arg(json)
                .exec(c)
        })
    }

    /// Every node's last heartbeat: (node id, JSON).
    pub fn nodes(&self) -> anyhow::Result<Vec<(String, String)>> {
        let key = self.key("nodes");
        self.with(|c| redis::cmd("HGETALL").arg(&key).query(c))
    }

    pub fn forget_node(&self, id: &str) -> anyhow::Result<()> {
        let key = self.key("nodes");
        self.with(|c| redis::cmd("HDEL").arg(&key).arg(id).exec(c))
    }

    /// A connection for subscribing to the changes channel (`changes_channel`),
    /// its reads bounded by `wait`.
    pub fn subscriber(&self, wait: Duration) -> anyhow::Result<redis::Connection> {
        let c = self.subscriber.get_connection_with_timeout(TIMEOUT)?;
        c.set_read_timeout(Some(wait))?;
        Ok(c)
    }

    /// A connection of its own for a thread that publishes a lot (the
    /// `@connections` relay): standalone, on the server subscribers use, so a
    /// PUBLISH's count is every node's subscribers even on a Redis Cluster.
    pub fn publisher(&self) -> anyhow::Result<redis::Connection> {
        let c = self.subscriber.get_connection_with_timeout(TIMEOUT)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        c.set_write_timeout(Some(TIMEOUT))?;
        Ok(c)
    }

    /// Where the `@connections` relay of the node tagged `tag` takes calls
    /// (`calls`) or answers (`answers`).
    pub fn relay_channel(&self, tag: &str, answers: bool) -> String {
        self.key(&format!("{}:{tag}", if answers { "wsr" } else { "ws" }))
    }

    pub fn changes_channel(&self) -> String {
        self.key("changes")
    }

    /// Where cache flushes are announced (JSON: api, stage, key, from).
    pub fn flushes_channel(&self) -> String {
        self.key("flushes")
    }

    /// Tells every node's workers to flush a stage's cache (`key`: one entry).
    pub fn publish_flush(&self, api: &str, stage: &str, key: Option<&[u8]>) -> anyhow::Result<()> {
        use base64::Engine;
        let json = serde_json::json!({
            "api": api,
            "stage": stage,
            "key": key.map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
            "from": self.node_id,
        })
        .to_string();
        let channel = self.flushes_channel();
        self.with(|c| redis::cmd("PUBLISH").arg(&channel).arg(&json).exec(c))
    }
}

/// Grants up to `ARGV[2]` more of a quota counted at `KEYS[1]`, never past the
/// limit `ARGV[1]`; the counter expires `ARGV[3]` ms after its period ends.
const GRANT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if n <= 0 then return {0, used} end
redis.call('INCRBY', KEYS[1], n)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {n, used + n}
";

/// GCRA on Redis's clock: grants up to `ARGV[3]` tokens of the bucket whose
/// theoretical arrival time (µs) is at `KEYS[1]`, `ARGV[1]` µs apart, with a
/// burst tolerance of `ARGV[2]` µs.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local n = math.min(math.floor((now + tolerance - base) / interval), tonumber(ARGV[3]))
if n <= 0 then return 0 end
local nxt = base + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return n
";

impl Shared {
    /// Takes up to `want` tokens of the throttle `name` shared by every node.
    pub fn tokens(
        &self,
        name: &str,
        interval_us: u64,
        tolerance_us: u64,
        want: u64,
    ) -> anyhow::Result<u64> {
        let key = format!("{}t:{name}", self.prefix);
        self.with(|c| {
            redis::Script::new(GCRA)
                .key(&key)
                .arg(interval_us.max(1))
                .arg(tolerance_us)
                .arg(want)
                .invoke(c)
        })
    }

    /// The counter of one quota in one period, over all nodes.
    pub fn quota_key(&self, key: &str, plan: &str, period_kind: u8, period: u64) -> String {
        format!("{}q:{key}:{plan}:{period_kind}:{period}", self.prefix)
    }

    /// Grants this node up to `want` more of a quota (0: spent); and the count
    /// over all nodes after it.
    pub fn grant(
        &self,
        counter: &str,
        limit: u64,
        want: u64,
        ttl_ms: u64,
    ) -> anyhow::Result<(u64, u64)> {
        self.with(|c| {
            redis::Script::new(GRANT)
                .key(counter)
                .arg(limit)
                .arg(want)
                .arg(ttl_ms)
                .invoke(c)
        })
    }

    /// Adds to a quota's counter what this node admitted on its own while Redis
    /// was away (negative: hands back what it was granted and did not use).
    pub fn add_count(&self, counter: &str, n: i64, ttl_ms: u64) -> anyhow::Result<()> {
        self.with(|c| {
            redis::cmd("INCRBY").arg(counter).arg(n).exec(c)?;
            redis::cmd("PEXPIRE").arg(counter).arg(ttl_ms).exec(c)
        })
    }

    /// Sets this node's count of requests served per (plan, key, day): one hash
    /// per day, a field per node, so sending a count twice (a reply lost to a
    /// timeout) never counts it twice.
    pub fn set_usage(&self, served: &[((String, String, u64), u64)]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for ((plan, key, day), n) in served {
            let hash = self.usage_key(plan, key, *day);
            pipe.cmd("HSET")
                .arg(&hash)
                .arg(&self.node_id)
                .arg(*n)
                .ignore();
            pipe.cmd("EXPIRE").arg(&hash).arg(400 * 86_400).ignore();
        }
        self.with(|c| pipe.exec(c))
    }

    fn usage_key(&self, plan: &str, key: &str, day: u64) -> String {
        format!("{}u:{plan}:{key}:{day}", self.prefix)
    }

    /// Requests served per day of `days`, over all nodes (days with none left out).
    pub fn usage(
        &self,
        plan: &str,
        key: &str,
        days: std::ops::RangeInclusive<u64>,
    ) -> anyhow::Result<Vec<(u64, u64)>> {
        let days: Vec<u64> = days.collect();
        let mut pipe = redis::pipe();
        for d in &days {
            pipe.cmd("HVALS").arg(self.usage_key(plan, key, *d));
        }
        let values: Vec<Vec<u64>> = self.with(|c| pipe.query(c))?;
        Ok(days
            .into_iter()
            .zip(values)
            .filter(|(_, v)| !v.is_empty())
            .map(|(d, v)| (d, v.iter().sum()))
            .collect())
    }

    /// Sets a quota's count over all nodes (a quota reset).
    pub fn set_count(&self, counter: &str, n: u64, ttl_ms: u64) -> anyhow::Result<()> {
        self.with(|c| {
            redis::cmd("SET")
                .arg(counter)
                .arg(n)
                .arg("PX")
                .arg(ttl_ms)
                .exec(c)
        })
    }

    /// A quota's count over all nodes.
    pub fn count(&self, counter: &str) -> anyhow::Result<u64> {
        self.with(|c| {
            let v: Option<i64> = redis::cmd("GET").arg(counter).query(c)?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
    }
}

/// Bumps the version and publishes it.
fn announce(c: &mut dyn ConnectionLike, version: &str, channel: &str) -> redis::RedisResult<()> {
    let v: u64 = redis::cmd("INCR").arg(version).query(c)?;
    redis::cmd("PUBLISH").arg(channel).arg(v).exec(c)
}

/// Fills a shared throttle's reservoir on this node once (at start, or when a
/// key's binding is made), so its first requests do not wait for the refill
/// thread. Redis away with `fail_open`: the node takes its share on its own.
pub fn fill(shared: &Shared, b: &crate::policy::throttle::SharedBucket, name: &str) {
    let Some(r) = b.remote.get() else { return };
    let (interval_ns, tolerance_ns) = b.gcra();
    if interval_ns == 0 {
        return;
    }
    // Redis already found away: no connect (and its timeout) per bucket; the
    // tokens thread fills it once Redis is back.
    let got = if shared.is_up() {
        shared.tokens(name, interval_ns / 1000, tolerance_ns / 1000, r.target)
    } else {
        Err(anyhow::anyhow!("redis unreachable"))
    };
    match got {
        Ok(n) => r.add(n),
        Err(_) if shared.fail_open => r.go_offline(b.limit, shared.alive.load(Ordering::Acquire)),
        Err(_) => {}
    }
}
