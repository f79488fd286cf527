//! Idle connections kept with no task: a worker's epoll set of their sockets
//! and what each needs to go on, nginx's way of holding an idle connection (a
//! few words and a registered descriptor) rather than a parked task and the
//! runtime's state for its socket. A sleeper is woken by its socket (data or
//! the peer's close), or by a waker it handed out (a command for it, its
//! deadline): the worker's watch takes it out and gives it a task again.
//!
//! What sleeps is the caller's (`Box<dyn Any>`): this set only keeps it.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::task::{RawWaker, RawWakerVTable, Waker};
use std::time::Instant;

use crate::upstream::connections::Slots;

// A sleeper's key is its slot and the slot's generation, in a waker's data word.
const _: () = assert!(usize::BITS == 64);

/// A worker's sleepers.
pub struct Dormant {
    epoll: OwnedFd,
    /// The worker's watch waits on it: sleepers can be woken.
    watched: Cell<bool>,
    slots: RefCell<Slots<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// When it wakes if nothing else woke it (taken when it fires).
    deadline: Option<Instant>,
    sleeper: Option<(OwnedFd, Box<dyn Any>)>,
}

/// A slot taken and a socket watched, for `lay` to fill at once.
pub struct Bed {
    key: u64,
    fd: OwnedFd,
}

impl Bed {
    /// The sleeper's key: what its wakers carry.
    pub fn key(&self) -> u64 {
        self.key
    }
}

impl Dormant {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointer; a descriptor it returns is ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` was just created and nothing else owns it.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            watched: Cell::new(false),
            slots: RefCell::default(),
        })
    }

    /// Watches a copy of `socket` (the caller then closes its own) in a new
    /// slot. Nothing is kept if it fails.
    pub fn prepare(&self, socket: BorrowedFd<'_>) -> io::Result<Bed> {
        if !self.watched.get() {
            return Err(io::Error::other("the dormant set is not watched"));
        }
        let fd = socket.try_clone_to_owned()?;
        let key = self.slots.borrow_mut().insert(Slot::default());
        // Level-triggered: bytes that came before this call wake it at once.
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            self.slots.borrow_mut().remove(key);
            return Err(err);
        }
        Ok(Bed { key, fd })
    }

    /// Puts `what` to sleep in the slot `bed` took, until `deadline` at the
    /// latest (`sweep`).
    pub fn lay(&self, bed: Bed, deadline: Instant, what: Box<dyn Any>) {
        if let Some(s) = self.slots.borrow_mut().get_mut(bed.key) {
            s.deadline = Some(deadline);
            s.sleeper = Some((bed.fd, what));
        }
    }

    /// Wakes the sleepers whose deadline is past (the worker's tick calls it).
    pub fn sweep(&self, now: Instant) {
        let mut due = Vec::new();
        for (key, s) in self.slots.borrow_mut().iter_mut() {
            if s.sleeper.is_some() && s.deadline.is_some_and(|d| d <= now) {
                s.deadline = None;
                due.push(key);
            }
        }
        for key in due {
            alarm(key as usize as *const ());
        }
    }

    /// Takes the sleeper `key` out (its socket no longer watched), if it still
    /// sleeps there.
    pub fn wake(&self, key: u64) -> Option<(OwnedFd, Box<dyn Any>)> {
        let (fd, what) = {
            let mut slots = self.slots.borrow_mut();
            let sleeper = slots.get_mut(key)?.sleeper.take()?;
            slots.remove(key);
            sleeper
        };
        // SAFETY: both descriptors are open. (A failure leaves a registration
        // that closing `fd` ends.)
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
        Some((fd, what))
    }

    /// The worker now waits on `poller`'s descriptor and calls `woken`.
    pub fn watched(&self) {
        self.watched.set(true);
    }

    /// Sleepers now (and beds prepared for them).
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Gives back the room a burst of sleepers left (`Slots::trim`).
    pub fn trim(&self) -> bool {
        self.slots.borrow_mut().trim()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the epoll descriptor, for the runtime to wait on.
    pub fn poller(&self) -> io::Result<OwnedFd> {
        self.epoll.try_clone()
    }

    /// Appends the keys of the sleepers woken since the last call: by their
    /// sockets (up to a batch, without waiting: the rest stay ready for the
    /// next call) and by their wakers.
    pub fn woken(&self, keys: &mut Vec<u64>) {
        const BATCH: usize = 256;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: `evs` has room for BATCH events.
        let n =
            unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), evs.as_mut_ptr(), BATCH as i32, 0) };
        // (Level-triggered: a second call before these are taken out would
        // return them again.)
        if n > 0 {
            keys.extend(evs[..n as usize].iter().map(|e| e.u64));
        }
        let _ = ALARMS.try_with(|a| keys.append(&mut a.borrow_mut().keys));
    }
}

/// Keys woken by wakers on this thread, and the watch's waker.
#[derive(Default)]
struct Alarms {
    keys: Vec<u64>,
    bell: Option<Waker>,
}

thread_local! {
    static ALARMS: RefCell<Alarms> = RefCell::default();
}

/// `true` (and `bell` is woken on the next) unless a waker fired since
/// `woken` last ran.
pub fn quiet(bell: &Waker) -> bool {
    ALARMS
        .try_with(|a| {
            let mut a = a.borrow_mut();
            if !a.keys.is_empty() {
                return false;
            }
            if !a.bell.as_ref().is_some_and(|b| b.will_wake(bell)) {
                a.bell = Some(bell.clone());
            }
            true
        })
        .unwrap_or(true)
}

/// A waker for sleeper `key` on this thread: waking it queues the key for the
/// watch. (The structures it is handed to are the worker's own, woken on its
/// thread only.)
pub fn waker(key: u64) -> Waker {
    // SAFETY: the vtable's functions treat the data word as a plain number.
    unsafe { Waker::from_raw(raw(key as usize as *const ())) }
}

fn raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(raw, alarm, alarm, |_| {});

fn alarm(data: *const ()) {
    let bell = ALARMS.try_with(|a| {
        let mut a = a.borrow_mut();
        a.keys.push(data as usize as u64);
        a.bell.take()
    });
    if let Ok(Some(b)) = bell {
        b.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_sleeper_wakes_on_its_socket_and_on_its_waker() {
        let d = Dormant::new().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        assert!(d.prepare(b.as_fd()).is_err(), "not watched yet");
        d.watched();
        let bed = d.prepare(b.as_fd()).unwrap();
        let key = bed.key();
        drop(b);
        d.lay(
            bed,
            Instant::now() + std::time::Duration::from_secs(60),
            Box::new(7u32),
        );
        let mut keys = Vec::new();
        d.woken(&mut keys);
        assert!(keys.is_empty());
        a.write_all(b"x").unwrap();
        d.woken(&mut keys);
        assert_eq!(keys, [key]);
        let (fd, what) = d.wake(key).unwrap();
        assert_eq!(*what.downcast::<u32>().unwrap(), 7);
        assert!(d.wake(key).is_none(), "taken once");
        // Read: else its socket is still ready below.
        let mut sock = std::net::TcpStream::from(fd);
        let mut one = [0u8; 1];
        sock.read_exact(&mut one).unwrap();

        let bed = d.prepare(sock.as_fd()).unwrap();
        let again = bed.key();
        assert_ne!(again, key, "a new generation");
        d.lay(bed, Instant::now(), Box::new(()));
        waker(key).wake(); // a stale key: found by no one
        waker(again).wake_by_ref();
        keys.clear();
        d.woken(&mut keys);
        assert!(keys.contains(&again));
        keys.clear();
        d.sweep(Instant::now());
        d.woken(&mut keys);
        assert_eq!(keys, [again], "its deadline passed");
        d.sweep(Instant::now());
        keys.clear();
        d.woken(&mut keys);
        assert!(keys.is_empty(), "a deadline fires once");
        assert!(d.wake(key).is_none());
        assert!(d.wake(again).is_some());
        assert!(d.is_empty());
    }
}
