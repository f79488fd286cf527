//! WebSocket pass-through: once the upstream has answered `101 Switching
//! Protocols`, bytes are copied both ways, as they come, until either side
//! closes or neither sends anything for the idle timeout. The frames are not
//! parsed: the two ends speak WebSocket to each other.
//!
//! Each direction reads one socket and writes the other, both at once. So that
//! neither aliases a stream the other uses, each side's socket is duplicated
//! (`dup`) into a descriptor only read and one only written; a TLS side's rustls
//! state is shared and borrowed only between awaits (decrypting what was read,
//! encrypting what is to be written). A direction that reads the end of its
//! stream closes its peer's writing side (TLS close_notify, then a TCP
//! half-close), so the WebSocket close handshake finishes over the other
//! direction; an error ends both.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http::stream::{Stream, TunnelTls};

/// Per direction: what one read takes.
const CHUNK: usize = 16 * 1024;

/// One end of a tunnel: its socket to read, its socket to write, and its TLS.
pub struct Side<'a> {
    tls: Option<RefCell<&'a mut dyn TunnelTls>>,
    read: TcpStream,
    write: TcpStream,
}

/// Duplicates `s`'s socket for a tunnel (the stream itself is not used while
/// the tunnel runs).
pub fn side(s: &mut Stream) -> io::Result<Side<'_>> {
    let fd = s.tcp().as_raw_fd();
    let read = dup(fd)?;
    let write = dup(fd)?;
    Ok(Side {
        tls: s.tunnel_tls().map(RefCell::new),
        read,
        write,
    })
}

fn dup(fd: std::os::fd::RawFd) -> io::Result<TcpStream> {
    // SAFETY: `dup` of an open descriptor; the new one is owned by the std stream
    // made from it.
    let new = unsafe { libc::dup(fd) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    let std = unsafe { std::net::TcpStream::from_raw_fd(new) };
    TcpStream::from_std(std)
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (or one closed and the other followed).
    Closed,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// A read, write or TLS record failed.
    Failed,
}

/// Copies `client` ⇄ `upstream` until both directions end or the tunnel idles
/// out; (how it ended, bytes sent up, bytes sent down).
pub async fn run(client: Side<'_>, upstream: Side<'_>, idle: Duration) -> (Ended, u64, u64) {
    let last = Cell::new(Instant::now());
    let failed = Cell::new(false);
    let (up_bytes, down_bytes) = (Cell::new(0u64), Cell::new(0u64));
    let Side {
        tls: ctls,
        read: cread,
        write: cwrite,
    } = client;
    let Side {
        tls: utls,
        read: uread,
        write: uwrite,
    } = upstream;
    let both = async {
        monoio::join!(
            copy(
                Half {
                    tls: ctls.as_ref(),
                    fd: cread
                },
                Half {
                    tls: utls.as_ref(),
                    fd: uwrite
                },
                &last,
                &failed,
                &up_bytes
            ),
            copy(
                Half {
                    tls: utls.as_ref(),
                    fd: uread
                },
                Half {
                    tls: ctls.as_ref(),
                    fd: cwrite
                },
                &last,
                &failed,
                &down_bytes
            ),
        )
    };
    let watchdog = async {
        loop {
            let quiet = last.get().elapsed();
            if quiet >= idle {
                return;
            }
            monoio::time::sleep((idle - quiet).max(Duration::from_millis(10))).await;
        }
    };
    let ended = monoio::select! {
        _ = both => if failed.get() { Ended::Failed } else { Ended::Closed },
        _ = watchdog => Ended::Idle,
    };
    (ended, up_bytes.get(), down_bytes.get())
}

type SharedTls<'s, 'a> = Option<&'s RefCell<&'a mut dyn TunnelTls>>;

/// A side's TLS (if any) and one of its descriptors.
struct Half<'s, 'a> {
    tls: SharedTls<'s, 'a>,
    fd: TcpStream,
}

/// One direction: reads `from`, writes `to`. On the end of `from`, closes `to`'s
/// writing side; on an error, shuts both sockets so the other direction ends too.
async fn copy(
    mut from: Half<'_, '_>,
    mut to: Half<'_, '_>,
    last: &Cell<Instant>,
    failed: &Cell<bool>,
    bytes: &Cell<u64>,
) {
    if pump(&mut from, &mut to, last, bytes).await.is_err() {
        failed.set(true);
        // SAFETY: shutting down open descriptors owned by these streams.
        unsafe {
            libc::shutdown(from.fd.as_raw_fd(), libc::SHUT_RDWR);
            libc::shutdown(to.fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

async fn pump(
    from: &mut Half<'_, '_>,
    to: &mut Half<'_, '_>,
    last: &Cell<Instant>,
    bytes: &Cell<u64>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut plain = Vec::with_capacity(CHUNK);
    // What the source's TLS read before the tunnel began.
    let mut open = match from.tls {
        Some(t) => {
            let unread = t.borrow_mut().take_unread();
            if unread.is_empty() {
                t.borrow_mut().plaintext(&mut plain)?
            } else {
                decrypt(t, &unread, &mut plain)?
            }
        }
        None => true,
    };
    loop {
        if !plain.is_empty() {
            last.set(Instant::now());
            bytes.set(bytes.get() + plain.len() as u64);
            plain = send(to, plain).await?;
            plain.clear();
        }
        if !open {
            break;
        }
        buf.clear();
        let (res, b) = from.fd.read(buf).await;
        buf = b;
        let n = res?;
        open = match from.tls {
            Some(t) => decrypt(t, &buf[..n], &mut plain)?,
            None => {
                std::mem::swap(&mut buf, &mut plain);
                n > 0
            }
        };
    }
    // The source ended: so does what goes to the other side.
    if let Some(t) = to.tls {
        let mut out = Vec::new();
        t.borrow_mut().seal_close(&mut out)?;
        let (res, _) = to.fd.write_all(out).await;
        res?;
    }
    to.fd.shutdown().await
}

/// Decrypts `cipher` (empty: the socket ended) into `plain`; `false` once the
/// stream has ended.
fn decrypt(
    tls: &RefCell<&mut dyn TunnelTls>,
    cipher: &[u8],
    plain: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut t = tls.borrow_mut();
    if cipher.is_empty() {
        t.feed(&[])?;
        return t.plaintext(plain);
    }
    let mut at = 0;
    let mut open = true;
    let mut stuck = false;
    while at < cipher.len() && open {
        let took = t.feed(&cipher[at..])?;
        at += took;
        open = t.plaintext(plain)?;
        if took == 0 {
            if stuck {
                return Err(io::Error::other("TLS took no more ciphertext"));
            }
            stuck = true;
        } else {
            stuck = false;
        }
    }
    Ok(open)
}

/// Writes `plain` to `to` (encrypted for a TLS side); gives the buffer back.
async fn send(to: &mut Half<'_, '_>, plain: Vec<u8>) -> io::Result<Vec<u8>> {
    match to.tls {
        Some(t) => {
            let mut sealed = Vec::with_capacity(plain.len() + 64);
            t.borrow_mut().seal(&plain, &mut sealed)?;
            let (res, _) = to.fd.write_all(sealed).await;
            res?;
            Ok(plain)
        }
        None => {
            let (res, plain) = to.fd.write_all(plain).await;
            res?;
            Ok(plain)
        }
    }
}
