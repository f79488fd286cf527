//! Usage-plan quotas: at most `limit` requests per key per calendar period (UTC day,
//! week from Monday, or month), exact across workers.
//!
//! Each quota is one atomic holding the period and the count handed out in it. A
//! worker leases a few requests at a time (at most a quarter of what is left per
//! worker, at most 64, at least 1) and spends them locally, so the shared atomic is
//! touched once per lease, not per request. Leases are carved out of `limit`, so no
//! period ever admits more than `limit` requests, whatever the number of workers; a
//! lease still unspent when the period ends is dropped with it.

use std::sync::atomic::{AtomicU64, Ordering};

pub type QuotaId = usize;

/// A quota period, as written in the config (`day | week | month`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

const USED_BITS: u32 = 44;
const USED_MASK: u64 = (1 << USED_BITS) - 1;
const DAY_S: u64 = 86_400;

impl Period {
    /// The index of the period holding `unix_s`, and when the next one starts.
    pub fn at(self, unix_s: u64) -> (u64, u64) {
        let day = unix_s / DAY_S;
        match self {
            Period::Day => (day, (day + 1) * DAY_S),
            Period::Week => {
                // 1970-01-01 was a Thursday: shift so weeks start on Monday.
                let week = (day + 3) / 7;
                (week, (week * 7 + 7 - 3) * DAY_S)
            }
            Period::Month => {
                let (y, m) = year_month(day);
                let index = y * 12 + (m - 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (index, days_from_civil(ny, nm) * DAY_S)
            }
        }
    }
}

/// (year, month 1-12) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn year_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m)
}

/// Days since 1970-01-01 of the first day of `y`-`m`.
fn days_from_civil(y: u64, m: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[derive(Debug)]
pub struct Quota {
    pub limit: u64,
    pub period: Period,
    /// `period index << 44 | requests handed out in it`.
    state: AtomicU64,
}

impl Quota {
    pub fn new(limit: u64, period: Period) -> Self {
        Self {
            limit: limit.min(USED_MASK),
            period,
            state: AtomicU64::new(0),
        }
    }

    /// Requests handed out (leased) in `period` so far.
    pub fn used(&self, period: u64) -> u64 {
        let s = self.state.load(Ordering::Relaxed);
        if s >> USED_BITS == period {
            s & USED_MASK
        } else {
            0
        }
    }

    /// Leases up to `want` requests of `period`; 0 when the quota is spent.
    pub fn lease(&self, period: u64, want: u64) -> u64 {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let (p, used) = (s >> USED_BITS, s & USED_MASK);
            let used = match p.cmp(&period) {
                std::cmp::Ordering::Equal => used,
                // A new period starts from zero.
                std::cmp::Ordering::Less => 0,
                // This worker's clock is behind another's: wait for it.
                std::cmp::Ordering::Greater => return 0,
            };
            let granted = want.min(self.limit - used.min(self.limit));
            if granted == 0 {
                return 0;
            }
            let next = (period << USED_BITS) | (used + granted);
            match self
                .state
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return granted,
                Err(current) => s = current,
            }
        }
    }
}

/// A worker's unspent leases, one slot per quota: (period, requests left).
#[derive(Debug, Default)]
pub struct Leases {
    slots: Vec<(u64, u64)>,
    workers: u64,
}

/// What a keyed response reports of its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset_s: u64,
}

impl Leases {
    pub fn new(quotas: usize, workers: usize) -> Self {
        Self {
            slots: vec![(u64::MAX, 0); quotas],
            workers: workers.max(1) as u64,
        }
    }

    /// Spends one request of quota `id` at `unix_s`; `Err` with the state when the
    /// period's quota is spent.
    pub fn admit(
        &mut self,
        id: QuotaId,
        quota: &Quota,
        unix_s: u64,
    ) -> Result<QuotaState, QuotaState> {
        let (period, next) = quota.period.at(unix_s);
        let slot = &mut self.slots[id];
        if slot.0 != period {
            *slot = (period, 0);
        }
        let state = |left: u64| QuotaState {
            limit: quota.limit,
            remaining: quota.limit - quota.used(period).min(quota.limit) + left,
            reset_s: next.saturating_sub(unix_s),
        };
        if slot.1 == 0 {
            let left = quota.limit - quota.used(period).min(quota.limit);
            let want = (left / (4 * self.workers)).clamp(1, 64);
            slot.1 = quota.lease(period, want);
            if slot.1 == 0 {
                return Err(state(0));
            }
        }
        slot.1 -= 1;
        Ok(state(slot.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods_in_utc() {
        // 2026-11-24 (a Tuesday) 12:00 UTC.
        let t = 1_795_521_600;
        let (_, next_day) = Period::Day.at(t);
        assert_eq!(next_day, 1_795_564_800, "midnight of the 25th");
        let (_, next_week) = Period::Week.at(t);
        assert_eq!(next_week, 1_795_996_800, "Monday the 30th");
        // Sunday 23:59:59 is still that week; Monday 00:00 is the next.
        assert_eq!(
            Period::Week.at(1_795_996_799).0 + 1,
            Period::Week.at(1_795_996_800).0
        );
        let (_, next_month) = Period::Month.at(t);
        assert_eq!(next_month, 1_796_083_200, "December 1st");
        // December rolls into January.
        let (_, jan) = Period::Month.at(1_797_000_000);
        assert_eq!(jan, 1_798_761_600, "2027-01-01");
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(days_from_civil(2000, 3), 11_017);
    }

    #[test]
    fn leases_never_exceed_the_limit_and_reset_each_period() {
        let q = Quota::new(10, Period::Day);
        let mut workers = [Leases::new(1, 2), Leases::new(1, 2)];
        let t = 1_795_521_600;
        let mut admitted = 0;
        for i in 0..40 {
            if workers[i % 2].admit(0, &q, t).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        let refused = workers[0].admit(0, &q, t).unwrap_err();
        assert_eq!((refused.limit, refused.remaining), (10, 0));
        // The next day starts afresh.
        assert_eq!(
            workers[1].admit(0, &q, t + DAY_S).map(|s| s.remaining),
            Ok(9)
        );
    }
}
