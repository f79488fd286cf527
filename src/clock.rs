//! Time on the request path, read on each core without shared state, and the HTTP
//! `Date` value computed once a second per core rather than per response.
//!
//! - Quota periods and `Date` read `CLOCK_REALTIME_COARSE` (a vDSO read of the
//!   kernel's last tick, a few ns): they need seconds.
//! - Throttles read the monotonic clock at full resolution: a coarse one advances in
//!   4 ms steps, and a bucket whose burst is under 4 ms of its rate would then be
//!   refilled to at most `burst` per step, below its rate.
//!
//! - Deadlines and idle ages read `CLOCK_MONOTONIC_COARSE` (`coarse_now`);
//!   latencies read the full clock.
//!
//! The first two add a skew that is zero in production; tests move it forward (the admin
//! API's `POST /test/clock`, enabled by `SHARDGATE_TEST_CLOCK=1`) to cross a quota
//! period or refill a bucket without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds added to every reading (tests only; written rarely, read Relaxed).
static SKEW_NS: AtomicU64 = AtomicU64::new(0);

/// Moves this process's clock forward by `d` (tests: crossing a quota period).
pub fn advance(d: Duration) {
    SKEW_NS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

fn skew_ns() -> u64 {
    SKEW_NS.load(Ordering::Relaxed)
}

/// The coarse real-time clock plus the skew, in nanoseconds since 1970.
fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (ts.tv_sec.max(0) as u64) * 1_000_000_000 + ts.tv_nsec.max(0) as u64 + skew_ns()
}

/// Unix seconds, from the coarse real-time clock.
pub fn unix_s() -> u64 {
    realtime_ns() / 1_000_000_000
}

/// Unix milliseconds, from the coarse real-time clock (cache expiry).
pub fn unix_ms() -> u64 {
    realtime_ns() / 1_000_000
}

/// Wall-clock nanoseconds since 1970 (span times).
pub fn unix_ns() -> u64 {
    realtime_ns()
}

/// Monotonic nanoseconds since `epoch` (the instant every worker shares).
pub fn since_ns(epoch: Instant) -> u64 {
    Instant::now().saturating_duration_since(epoch).as_nanos() as u64 + skew_ns()
}

/// The monotonic clock as of the kernel's last tick (`CLOCK_MONOTONIC_COARSE`: up
/// to one tick, 4 ms at 250 Hz, behind), as an `Instant`. A vDSO read of a stored
/// value, 5 ns against the full clock's 26 on a KVM guest's TSC: for deadlines and
/// idle ages, where firing a few ms early is harmless; never for latencies.
pub fn coarse_now() -> Instant {
    thread_local! {
        /// One full reading and the same moment as a `CLOCK_MONOTONIC` duration
        /// (what `Instant` is on Linux): coarse readings are placed against it.
        static BASE: (Instant, Duration) = (Instant::now(), monotonic(libc::CLOCK_MONOTONIC));
    }
    let coarse = monotonic(libc::CLOCK_MONOTONIC_COARSE);
    BASE.with(|&(at, base)| match coarse.checked_sub(base) {
        Some(ahead) => at + ahead,
        None => at.checked_sub(base - coarse).unwrap_or(at),
    })
}

/// A monotonic clock's reading, as time since its (boot-time) origin.
fn monotonic(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const HTTP_DATE_LEN: usize = 29;

/// The current second's `Date` value, refreshed when the second changes.
#[derive(Debug)]
pub struct DateCache {
    secs: u64,
    text: [u8; HTTP_DATE_LEN],
}

impl Default for DateCache {
    fn default() -> Self {
        Self {
            secs: 0,
            text: http_date(0),
        }
    }
}

impl DateCache {
    /// The second of the last `now()` (0 before any): a clock read saved where a
    /// second's precision is enough.
    pub fn secs(&self) -> u64 {
        self.secs
    }

    pub fn now(&mut self) -> &[u8; HTTP_DATE_LEN] {
        let secs = unix_s();
        if secs != self.secs {
            self.secs = secs;
            self.text = http_date(secs);
        }
        &self.text
    }
}

/// English month abbreviations, January first (HTTP dates, logs, certificates).
pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A UTC calendar date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1-12.
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Civil {
    /// Unix seconds (before 1970 too) → the UTC date and time.
    pub fn of(unix_s: i64) -> Self {
        let (year, month, day) = civil_from_days(unix_s.div_euclid(86_400));
        let t = unix_s.rem_euclid(86_400) as u32;
        Self {
            year,
            month,
            day,
            hour: t / 3600,
            minute: t / 60 % 60,
            second: t % 60,
        }
    }

    pub fn month_name(&self) -> &'static str {
        MONTHS[(self.month as usize).saturating_sub(1) % 12]
    }
}

/// Formats Unix seconds as an IMF-fixdate (RFC 9110 §5.6.7).
pub fn http_date(secs: u64) -> [u8; HTTP_DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    let c = Civil::of(secs as i64);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(secs / 86_400 % 7) as usize]);
    two(&mut out[5..7], c.day.into());
    out[8..11].copy_from_slice(c.month_name().as_bytes());
    let y = c.year as u64;
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    two(&mut out[17..19], c.hour.into());
    two(&mut out[20..22], c.minute.into());
    two(&mut out[23..25], c.second.into());
    out
}

fn two(dst: &mut [u8], v: u64) {
    dst[0] = b'0' + (v / 10 % 10) as u8;
    dst[1] = b'0' + (v % 10) as u8;
}

/// Howard Hinnant's (year, month, day) → days since 1970-01-01, proleptic Gregorian.
pub fn days_from_civil(y: u64, m: u32, d: u32) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let m = u64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + u64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` → days since 1970-01-01; `None` unless a real date from 1970 on.
pub fn parse_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if y < 1970 || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let day = days_from_civil(u64::from(y), m, d);
    // Rejects the 31st of a 30-day month and the like: it round-trips or it is wrong.
    (format_date(day) == s).then_some(day)
}

/// Days since 1970-01-01 → `YYYY-MM-DD`.
pub fn format_date(day: u64) -> String {
    let (y, m, d) = civil_from_days(day as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days → (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_never_ahead_and_at_most_a_tick_behind() {
        let mut last = coarse_now();
        let until = Instant::now() + Duration::from_millis(30);
        while Instant::now() < until {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            assert!(coarse <= after, "ahead by {:?}", coarse - after);
            // A tick is 1-10 ms (CONFIG_HZ); a busy test machine may add a little.
            let behind = before.saturating_duration_since(coarse);
            assert!(behind < Duration::from_millis(25), "behind by {behind:?}");
            assert!(coarse >= last, "went back by {:?}", last - coarse);
            last = coarse;
        }
    }

    #[test]
    fn civil_time_before_and_after_the_epoch() {
        let c = Civil::of(784_111_777);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (1994, 11, 6, 8, 49, 37)
        );
        assert_eq!(c.month_name(), "Nov");
        let c = Civil::of(-1);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (1969, 12, 31, 23, 59, 59)
        );
    }

    #[test]
    fn formats_known_dates() {
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(1_795_478_400), b"Tue, 24 Nov 2026 00:00:00 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_date("2026-11-24"), Some(1_795_478_400 / 86_400));
        assert_eq!(format_date(1_795_478_400 / 86_400), "2026-11-24");
        assert_eq!(
            parse_date("2024-02-29").map(format_date).as_deref(),
            Some("2024-02-29")
        );
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-1-01",
            "1969-12-31",
            "yesterday",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
