//! Busy polling before the epoll driver sleeps (shardgate).
//!
//! On a loaded worker the next event is often microseconds away. Sleeping in
//! `epoll_wait` for it lets the core go idle, and the peer that then sends has to
//! wake it: an inter-processor interrupt, costly on virtual machines (an exit to
//! the hypervisor, paid by the sender's core). Polling a little while before
//! sleeping keeps the core awake through such short gaps, as Seastar's reactor
//! does (`--idle-poll-time-us`). The window adapts as the kernel's
//! `cpuidle-haltpoll` does: it grows while the events that followed a sleep came
//! soon after the window gave up, and shrinks while sleeps were long, so an idle
//! or lightly loaded worker does not poll at all.

use std::{
    io,
    time::{Duration, Instant},
};

/// The adaptive polling window. `max` zero: never poll.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BusyPoll {
    max: Duration,
    window: Duration,
}

impl BusyPoll {
    /// Sets the longest window; zero switches polling off.
    pub(crate) fn set_max(&mut self, max: Duration) {
        self.max = max;
        self.window = self.window.min(max);
    }

    /// How long to poll before sleeping for at most `timeout` (`None`: until
    /// an event).
    pub(crate) fn window(&self, timeout: Option<Duration>) -> Duration {
        match timeout {
            Some(t) => self.window.min(t),
            None => self.window,
        }
    }

    /// Whether polling is on at all (the driver then times its sleeps).
    pub(crate) fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// After the worker idled for `idle` (polling for the window, which found
    /// nothing, then sleeping): an event within `max` means a longer window
    /// would have caught it; a longer wait means the worker is idle enough not
    /// to poll. A poll that found an event changes nothing.
    pub(crate) fn idled(&mut self, idle: Duration) {
        if idle <= self.max {
            self.window = (self.window * 2).max(self.max / 4).min(self.max);
        } else {
            self.window /= 2;
            if self.window < self.max / 8 {
                self.window = Duration::ZERO;
            }
        }
    }
}

/// Polls for up to `busy`'s window, then sleeps for what is left of `timeout`
/// (`None`: until an event), and lets `busy` adapt to how long it idled.
#[cfg(unix)]
pub(crate) fn wait(
    poll: &mut mio::Poll,
    events: &mut mio::Events,
    busy: &mut BusyPoll,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let window = busy.window(timeout);
    let start = Instant::now();
    while !window.is_zero() {
        poll_once(poll, events, Some(Duration::ZERO))?;
        if !events.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= window {
            break;
        }
        std::hint::spin_loop();
    }
    poll_once(poll, events, timeout.map(|t| t.saturating_sub(start.elapsed())))?;
    busy.idled(start.elapsed());
    Ok(())
}

/// One `epoll_wait`; an interrupted one found nothing.
#[cfg(unix)]
fn poll_once(
    poll: &mut mio::Poll,
    events: &mut mio::Events,
    timeout: Option<Duration>,
) -> io::Result<()> {
    match poll.poll(events, timeout) {
        Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
        _ => Ok(()),
    }
}
