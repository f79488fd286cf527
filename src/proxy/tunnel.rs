//! WebSocket pass-through: once the upstream has answered `101 Switching
//! Protocols`, bytes are copied both ways, as they come, until either side
//! closes or neither sends anything for the idle timeout. The frames are not
//! parsed: the two ends speak WebSocket to each other.
//!
//! Each direction reads one socket and writes the other. So that both can wait
//! on their reads at once without aliasing a stream, each writes through a
//! duplicate of the other socket's descriptor (`dup`): the originals are only
//! read, the duplicates only written. A direction that reads the end of its
//! stream half-closes its peer (the WebSocket close handshake finishes over the
//! other direction); an error ends both.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http::stream::Stream;

/// Per direction: what one read takes.
const CHUNK: usize = 16 * 1024;

/// A writable duplicate of a plain TCP stream; `None` for TLS (not tunnelled).
pub fn writer_of(s: &Stream) -> Option<io::Result<TcpStream>> {
    let Stream::Plain(tcp) = s else { return None };
    // SAFETY: `dup` of an open descriptor this stream owns; the new descriptor
    // is owned by the std stream made from it.
    let fd = unsafe { libc::dup(tcp.as_raw_fd()) };
    if fd < 0 {
        return Some(Err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    Some(TcpStream::from_std(std))
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (or one closed and the other followed).
    Closed,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// A read or write failed.
    Failed,
}

/// Copies `client` ⇄ `upstream` until both directions end or the tunnel idles
/// out. `to_upstream` and `to_client` are the writable duplicates.
pub async fn run(
    client: &mut Stream,
    upstream: &mut Stream,
    mut to_upstream: TcpStream,
    mut to_client: TcpStream,
    idle: Duration,
) -> (Ended, u64, u64) {
    let last = Cell::new(Instant::now());
    let failed = Cell::new(false);
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let both = async {
        monoio::join!(
            copy(client, &mut to_upstream, &last, &failed, &up_bytes),
            copy(upstream, &mut to_client, &last, &failed, &down_bytes),
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

/// One direction: reads `from`, writes `to`; on the end of `from`, half-closes
/// `to`; on an error, shuts both sockets so the other direction ends too.
async fn copy(
    from: &mut Stream,
    to: &mut TcpStream,
    last: &Cell<Instant>,
    failed: &Cell<bool>,
    bytes: &Cell<u64>,
) {
    let mut buf = Vec::with_capacity(CHUNK);
    loop {
        buf.clear();
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(0) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                last.set(Instant::now());
                bytes.set(bytes.get() + n as u64);
                let (res, b) = to.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    failed.set(true);
    // SAFETY: shutting down open descriptors owned by these streams.
    unsafe {
        libc::shutdown(from.tcp().as_raw_fd(), libc::SHUT_RDWR);
        libc::shutdown(to.as_raw_fd(), libc::SHUT_RDWR);
    }
}
