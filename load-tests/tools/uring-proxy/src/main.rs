//! A prototype of one worker's loop on the `io-uring` crate directly, for issue 23's
//! io_uring goal: what a proxy's kernel crossings cost when every socket has one
//! multishot receive armed with buffers from a provided-buffer ring, and each turn of
//! the loop is one `io_uring_enter` (submitting the turn's sends and waiting for
//! completions), on a ring set up `SINGLE_ISSUER | DEFER_TASKRUN`.
//!
//! It is a floor, not a gateway: each client connection gets its own upstream
//! connection (connected when the client's is accepted) and bytes are relayed as
//! they come, both ways, with no HTTP parsing, routing or headers added. One send
//! per direction is in flight at a time (later data waits its turn, so a short send
//! cannot reorder bytes).
//!
//!     uring-proxy LISTEN_PORT UPSTREAM_ADDR      # e.g. 18084 127.0.0.1:18081

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF_SIZE: usize = 4096;
const BUFS: u16 = 4096;
const GROUP: u16 = 0;

// user_data: kind (8 bits) | slot (24) | generation (16) | buffer id (16).
const ACCEPT: u64 = 1;
const RECV_CLIENT: u64 = 2;
const RECV_UP: u64 = 3;
const SEND_CLIENT: u64 = 4;
const SEND_UP: u64 = 5;

fn tag(kind: u64, slot: usize, generation: u16, bid: u16) -> u64 {
    kind << 56 | (slot as u64) << 32 | u64::from(generation) << 16 | u64::from(bid)
}

fn untag(d: u64) -> (u64, usize, u16, u16) {
    (
        d >> 56,
        ((d >> 32) & 0xff_ffff) as usize,
        (d >> 16) as u16,
        d as u16,
    )
}

/// The provided-buffer ring and the buffers it hands out.
struct Buffers {
    ring: *mut types::BufRingEntry,
    tail: u16,
    data: Vec<u8>,
    /// Bytes received into each buffer, and how many of them are sent.
    len: Vec<u32>,
    sent: Vec<u32>,
}

impl Buffers {
    fn new(uring: &IoUring) -> std::io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(BUFS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("layout");
        // SAFETY: a non-zero-sized layout; the ring lives as long as the process.
        let ring = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        // SAFETY: `ring` is valid for BUFS entries and never freed.
        unsafe {
            uring
                .submitter()
                .register_buf_ring(ring as u64, BUFS, GROUP)?
        };
        let mut b = Self {
            ring,
            tail: 0,
            data: vec![0; usize::from(BUFS) * BUF_SIZE],
            len: vec![0; usize::from(BUFS)],
            sent: vec![0; usize::from(BUFS)],
        };
        for bid in 0..BUFS {
            b.give(bid);
        }
        b.publish();
        Ok(b)
    }

    /// Hands buffer `bid` back to the kernel (seen at the next `publish`).
    fn give(&mut self, bid: u16) {
        let i = usize::from(self.tail & (BUFS - 1));
        // SAFETY: `i` < BUFS; the kernel reads entries only up to the published tail.
        let e = unsafe { &mut *self.ring.add(i) };
        e.set_addr(self.data[usize::from(bid) * BUF_SIZE..].as_ptr() as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field of the ring's first entry, shared with the kernel.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.ring).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    fn ptr(&self, bid: u16, from: u32) -> *const u8 {
        self.data[usize::from(bid) * BUF_SIZE + from as usize..].as_ptr()
    }
}

/// One direction of a relay: the sends waiting behind the one in flight.
#[derive(Default)]
struct Direction {
    busy: bool,
    queue: VecDeque<u16>,
}

struct Pair {
    client: RawFd,
    up: RawFd,
    generation: u16,
    to_up: Direction,
    to_client: Direction,
    /// Operations whose completions are still to come (receives armed, sends).
    pending: u32,
    closing: bool,
}

struct Proxy {
    uring: IoUring,
    bufs: Buffers,
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    generation: u16,
    upstream: SocketAddr,
}

impl Proxy {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every buffer an entry points at outlives its operation (the
        // buffers live as long as the process; a buffer is reused only after its
        // send completes).
        while unsafe { self.uring.submission().push(&e) }.is_err() {
            self.uring.submit().expect("submit");
        }
    }

    fn recv(&mut self, kind: u64, slot: usize) {
        let p = self.pairs[slot].as_mut().expect("pair");
        let fd = if kind == RECV_CLIENT { p.client } else { p.up };
        p.pending += 1;
        let e = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(tag(kind, slot, p.generation, 0));
        self.push(e);
    }

    fn send(&mut self, kind: u64, slot: usize, bid: u16) {
        let p = self.pairs[slot].as_mut().expect("pair");
        let (fd, dir) = if kind == SEND_UP {
            (p.up, &mut p.to_up)
        } else {
            (p.client, &mut p.to_client)
        };
        if dir.busy {
            dir.queue.push_back(bid);
            return;
        }
        dir.busy = true;
        p.pending += 1;
        let generation = p.generation;
        let from = self.bufs.sent[usize::from(bid)];
        let len = self.bufs.len[usize::from(bid)] - from;
        let e = opcode::Send::new(types::Fd(fd), self.bufs.ptr(bid, from), len)
            .build()
            .user_data(tag(kind, slot, generation, bid));
        self.push(e);
    }

    fn accepted(&mut self, client: RawFd) {
        let up = match TcpStream::connect(self.upstream) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.into_raw_fd()
            }
            Err(e) => {
                eprintln!("upstream connect: {e}");
                // SAFETY: the accepted descriptor is ours.
                unsafe { libc::close(client) };
                return;
            }
        };
        set_nodelay(client);
        self.generation = self.generation.wrapping_add(1);
        let pair = Pair {
            client,
            up,
            generation: self.generation,
            to_up: Direction::default(),
            to_client: Direction::default(),
            pending: 0,
            closing: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.pairs[s] = Some(pair);
                s
            }
            None => {
                self.pairs.push(Some(pair));
                self.pairs.len() - 1
            }
        };
        self.recv(RECV_CLIENT, slot);
        self.recv(RECV_UP, slot);
    }

    /// Ends a pair: both sockets shut down (their receives end), freed once no
    /// operation of theirs is pending.
    fn end(&mut self, slot: usize) {
        let p = self.pairs[slot].as_mut().expect("pair");
        if !p.closing {
            p.closing = true;
            // SAFETY: both descriptors are the pair's.
            unsafe {
                libc::shutdown(p.client, libc::SHUT_RDWR);
                libc::shutdown(p.up, libc::SHUT_RDWR);
            }
        }
        self.reap(slot);
    }

    fn reap(&mut self, slot: usize) {
        let Some(p) = self.pairs[slot].as_mut() else {
            return;
        };
        if !p.closing || p.pending > 0 {
            return;
        }
        let queued: Vec<u16> = p
            .to_up
            .queue
            .drain(..)
            .chain(p.to_client.queue.drain(..))
            .collect();
        // SAFETY: both descriptors are the pair's, and nothing refers to them now.
        unsafe {
            libc::close(p.client);
            libc::close(p.up);
        }
        for bid in queued {
            self.bufs.give(bid);
        }
        self.pairs[slot] = None;
        self.free.push(slot);
    }

    fn complete(&mut self, cqe: &cqueue::Entry) {
        let (kind, slot, generation, bid) = untag(cqe.user_data());
        if kind == ACCEPT {
            if cqe.result() >= 0 {
                self.accepted(cqe.result());
            }
            if !cqueue::more(cqe.flags()) {
                panic!("multishot accept ended: {}", cqe.result());
            }
            return;
        }
        let live = matches!(&self.pairs[slot], Some(p) if p.generation == generation);
        if !live {
            return;
        }
        let res = cqe.result();
        match kind {
            RECV_CLIENT | RECV_UP => {
                let more = cqueue::more(cqe.flags());
                if !more {
                    self.pairs[slot].as_mut().expect("pair").pending -= 1;
                }
                if let Some(b) = cqueue::buffer_select(cqe.flags()) {
                    if res > 0 && !self.pairs[slot].as_ref().expect("pair").closing {
                        self.bufs.len[usize::from(b)] = res as u32;
                        self.bufs.sent[usize::from(b)] = 0;
                        let to = if kind == RECV_CLIENT {
                            SEND_UP
                        } else {
                            SEND_CLIENT
                        };
                        self.send(to, slot, b);
                    } else {
                        self.bufs.give(b);
                    }
                }
                if res == -libc::ENOBUFS && !more {
                    // Out of buffers: armed again (some come back this turn).
                    self.recv(kind, slot);
                } else if res <= 0 {
                    self.end(slot);
                } else if !more {
                    self.recv(kind, slot);
                }
            }
            SEND_CLIENT | SEND_UP => {
                let p = self.pairs[slot].as_mut().expect("pair");
                p.pending -= 1;
                let dir = if kind == SEND_UP {
                    &mut p.to_up
                } else {
                    &mut p.to_client
                };
                dir.busy = false;
                let next = dir.queue.pop_front();
                if res <= 0 || p.closing {
                    self.bufs.give(bid);
                    if let Some(n) = next {
                        self.bufs.give(n);
                    }
                    self.end(slot);
                    return;
                }
                let i = usize::from(bid);
                self.bufs.sent[i] += res as u32;
                if self.bufs.sent[i] < self.bufs.len[i] {
                    // A short send: the rest of this buffer goes first.
                    if let Some(n) = next {
                        self.pairs[slot]
                            .as_mut()
                            .expect("pair")
                            .queue(kind)
                            .push_front(n);
                    }
                    self.send(kind, slot, bid);
                    return;
                }
                self.bufs.give(bid);
                if let Some(n) = next {
                    self.send(kind, slot, n);
                }
            }
            _ => {}
        }
    }
}

impl Pair {
    fn queue(&mut self, kind: u64) -> &mut VecDeque<u16> {
        if kind == SEND_UP {
            &mut self.to_up.queue
        } else {
            &mut self.to_client.queue
        }
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(18084);
    let upstream: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:18081".parse().expect("address"));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let uring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)?;
    let bufs = Buffers::new(&uring)?;
    let mut p = Proxy {
        uring,
        bufs,
        pairs: Vec::new(),
        free: Vec::new(),
        generation: 0,
        upstream,
    };
    p.push(
        opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .build()
            .user_data(tag(ACCEPT, 0, 0, 0)),
    );
    eprintln!("uring-proxy listening on 127.0.0.1:{port}, upstream {upstream}");
    let mut done = Vec::with_capacity(1024);
    loop {
        // The turn's one system call: this turn's submissions, and a wait for
        // at least one completion.
        match p.uring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.extend(p.uring.completion());
        for cqe in done.drain(..) {
            p.complete(&cqe);
        }
        p.bufs.publish();
    }
}
