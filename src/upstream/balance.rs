//! Choosing a target of an upstream group for one request (issue 18's
//! `balance:`), as per-shard state that needs no lock: each worker keeps its own
//! `RoundRobin` cursor and in-flight counts, and shares only the immutable `Ring`.
//!
//! - `RoundRobin`: smooth weighted round robin (nginx's): over any run of
//!   `sum(weights)` picks, each target gets exactly its weight, spread out rather
//!   than in bursts.
//! - `least_request`: the power of two choices: two targets drawn by weight, the
//!   one with fewer requests in flight per unit of weight wins.
//! - `Ring`: consistent hashing on a ring of points (160 per unit of weight, as
//!   ketama): a key goes to the first point at or after its hash whose target is
//!   up, so a key moves only when its own target leaves.
//!
//! Every pick takes an `up` predicate (health checks, ejection): a target that is
//! down is skipped without rebuilding anything. `upstream::choose` holds them per
//! shard and group.

/// Smooth weighted round robin over one shard's picks.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    weights: Box<[i64]>,
    current: Box<[i64]>,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: vec![0; weights.len()].into_boxed_slice(),
        }
    }

    /// The next target among those `up`; `None` when none is.
    pub fn pick(&mut self, up: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if self.weights[i] == 0 || !up(i) {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// Cumulative weights, for drawing a target with probability proportional to its
/// weight among those up.
#[derive(Debug, Clone)]
pub struct Weights {
    weights: Box<[u32]>,
}

impl Weights {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.into(),
        }
    }

    /// A target drawn by weight among those `up` (a linear pass: groups are small).
    fn draw(&self, r: u64, up: &impl Fn(usize) -> bool) -> Option<usize> {
        let total: u64 = (0..self.weights.len())
            .filter(|&i| up(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if total == 0 {
            return None;
        }
        let mut at = r % total;
        for (i, &w) in self.weights.iter().enumerate() {
            if !up(i) {
                continue;
            }
            if at < u64::from(w) {
                return Some(i);
            }
            at -= u64::from(w);
        }
        None
    }

    /// Least request by the power of two choices: two draws by weight; the target
    /// with fewer requests in flight per unit of weight (`in_flight[i] / w[i]`,
    /// compared by cross-multiplying) wins, the first on a tie.
    pub fn least_request(
        &self,
        in_flight: &[u32],
        up: impl Fn(usize) -> bool,
        mut random: impl FnMut() -> u64,
    ) -> Option<usize> {
        let a = self.draw(random(), &up)?;
        let b = self.draw(random(), &up)?;
        let load = |i: usize, other: usize| {
            u64::from(in_flight.get(i).copied().unwrap_or(0)) * u64::from(self.weights[other])
        };
        Some(if load(b, a) < load(a, b) { b } else { a })
    }
}

/// Points on the ring per unit of weight: enough that targets of equal weight get
/// shares within a few percent of each other (ketama's figure).
const POINTS_PER_WEIGHT: u32 = 160;
/// Bounds the ring's memory (16 bytes a point) whatever the weights.
const MAX_POINTS: usize = 1 << 20;

/// A consistent-hash ring over a group's targets, built when membership changes
/// (off the request path) and shared read-only.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, target), sorted by point.
    points: Box<[(u64, u32)]>,
    targets: usize,
}

impl Ring {
    /// `ids` name the targets stably (their URLs), so every node and every
    /// rebuild places a target's points at the same spots.
    pub fn new(ids: &[&str], weights: &[u32]) -> Self {
        let want: usize = weights
            .iter()
            .map(|&w| u64::from(w) * u64::from(POINTS_PER_WEIGHT))
            .sum::<u64>()
            .try_into()
            .unwrap_or(usize::MAX);
        let scale = if want > MAX_POINTS {
            MAX_POINTS as f64 / want as f64
        } else {
            1.0
        };
        let mut points = Vec::with_capacity(want.min(MAX_POINTS));
        for (t, (id, &w)) in ids.iter().zip(weights).enumerate() {
            let n = (f64::from(w) * f64::from(POINTS_PER_WEIGHT) * scale).ceil() as u32;
            for k in 0..n {
                let mut key = Vec::with_capacity(id.len() + 11);
                key.extend_from_slice(id.as_bytes());
                key.push(b'#');
                key.extend_from_slice(itoa::Buffer::new().format(k).as_bytes());
                points.push((hash(&key), t as u32));
            }
        }
        points.sort_unstable();
        Self {
            points: points.into(),
            targets: ids.len(),
        }
    }

    /// The target of `key`'s hash: the first point at or after it (wrapping) whose
    /// target is `up`; `None` when none is.
    pub fn pick(&self, key_hash: u64, up: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < key_hash);
        let n = self.points.len();
        // A down target's points are passed over; once every target has been seen
        // down (tracked for groups of up to 64), none is up.
        let mut down: u64 = 0;
        for k in 0..n {
            let t = self.points[(start + k) % n].1 as usize;
            if up(t) {
                return Some(t);
            }
            if t < 64 {
                down |= 1 << t;
                if self.targets <= 64 && down.count_ones() as usize == self.targets {
                    return None;
                }
            }
        }
        None
    }
}

/// A stable 64-bit hash (FNV-1a with a final mix): the same on every node and
/// every build, as a shared ring needs.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV alone leaves short keys' high bits clustered.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator for the tests (xorshift64*).
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn round_robin_gives_each_target_its_weight_spread_out() {
        let mut rr = RoundRobin::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(|_| true).unwrap()).collect();
        // nginx's documented sequence for weights 5, 1, 1.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..7000 {
            counts[rr.pick(|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }

    #[test]
    fn round_robin_skips_targets_that_are_down() {
        let mut rr = RoundRobin::new(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(|i| i != 1).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 3);
        assert_eq!(rr.pick(|_| false), None);
        assert_eq!(RoundRobin::new(&[]).pick(|_| true), None);
    }

    #[test]
    fn least_request_follows_weights_when_idle() {
        let w = Weights::new(&[3, 1, 1]);
        let mut r = rng(7);
        let mut counts = [0u32; 3];
        let n = 100_000;
        for _ in 0..n {
            counts[w.least_request(&[0, 0, 0], |_| true, &mut r).unwrap()] += 1;
        }
        // Equal (zero) loads: the first draw wins, so shares follow the weights.
        for (i, want) in [0.6, 0.2, 0.2].into_iter().enumerate() {
            let got = f64::from(counts[i]) / f64::from(n);
            assert!(
                (got - want).abs() < 0.05 * want,
                "target {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded_per_weight() {
        let w = Weights::new(&[1, 1]);
        let mut r = rng(11);
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[w.least_request(&[10, 2], |_| true, &mut r).unwrap()] += 1;
        }
        // Target 0 wins only when both draws are 0 (a quarter of the time).
        let share0 = f64::from(counts[0]) / 10_000.0;
        assert!((share0 - 0.25).abs() < 0.03, "{share0}");
        // Weighted: 4 in flight on weight 4 is lighter than 2 on weight 1.
        let w = Weights::new(&[4, 1]);
        let mut draws = [0u64, 4].into_iter().cycle();
        assert_eq!(
            w.least_request(&[4, 2], |_| true, || draws.next().unwrap_or(0)),
            Some(0)
        );
        let mut draws = [0u64, 4].into_iter().cycle();
        assert_eq!(
            w.least_request(&[5, 1], |_| true, || draws.next().unwrap_or(0)),
            Some(1)
        );
        assert_eq!(w.least_request(&[0, 0], |i| i == 1, &mut r), Some(1));
        assert_eq!(w.least_request(&[0, 0], |_| false, &mut r), None);
    }

    #[test]
    fn ring_keeps_keys_and_moves_only_a_departed_targets_keys() {
        let ids = [
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ];
        let ring = Ring::new(&ids, &[1, 1, 1]);
        let keys: Vec<u64> = (0..10_000u32)
            .map(|k| hash(format!("user-{k}").as_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&h| ring.pick(h, |_| true).unwrap())
            .collect();
        // Stable: the same key, the same target; a rebuild places points alike.
        let again = Ring::new(&ids, &[1, 1, 1]);
        for (&h, &t) in keys.iter().zip(&before) {
            assert_eq!(again.pick(h, |_| true), Some(t));
        }
        // Shares within 15% of a third each.
        for t in 0..3 {
            let share = before.iter().filter(|&&x| x == t).count() as f64 / 10_000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.05, "target {t}: {share}");
        }
        // Target 1 goes down: only its keys move; the others stay.
        let after: Vec<usize> = keys
            .iter()
            .map(|&h| ring.pick(h, |t| t != 1).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1);
            } else {
                assert_eq!(a, b);
            }
        }
        assert_eq!(ring.pick(keys[0], |_| false), None);
    }

    #[test]
    fn ring_shares_follow_weights_and_stay_bounded() {
        let ring = Ring::new(&["a", "b"], &[3, 1]);
        let mut counts = [0u32; 2];
        for k in 0..20_000u32 {
            counts[ring.pick(hash(&k.to_le_bytes()), |_| true).unwrap()] += 1;
        }
        let share = f64::from(counts[0]) / 20_000.0;
        assert!((share - 0.75).abs() < 0.05, "{share}");
        let big = Ring::new(&["a", "b"], &[100_000, 100_000]);
        assert!(big.points.len() <= MAX_POINTS + 2);
        assert!(Ring::new(&[], &[]).pick(1, |_| true).is_none());
    }
}
