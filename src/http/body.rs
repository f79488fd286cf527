//! Streaming message bodies: copy a body framed one way (`Content-Length`, chunked,
//! until close) from one socket to another, re-framing as needed, never holding more
//! than one read buffer of it. Buffers move into monoio's owned-buffer I/O and back.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::http::stream::Stream;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::http::parse::{Chunk, ChunkError, ChunkedDecoder, Framing};

/// Spare capacity asked for before a body read: large reads keep syscalls per
/// megabyte low (64 KiB is what nginx's proxy_buffer defaults add up to).
pub const BODY_READ: usize = 64 * 1024;

/// How the copied body is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encode {
    /// Bytes as they are (length-delimited or close-delimited output).
    Raw,
    /// As `Transfer-Encoding: chunked`.
    Chunked,
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("peer closed before the body ended")]
    ReadClosed,
    #[error("read failed: {0}")]
    Read(io::Error),
    #[error("read timed out")]
    ReadTimeout,
    #[error("write failed: {0}")]
    Write(io::Error),
    #[error("{0}")]
    Framing(ChunkError),
    #[error("body larger than the limit")]
    TooLarge,
}

/// Appends what one read returns to `buf`; `Ok(0)` is end of stream.
pub async fn read_more(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    min_spare: usize,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (res, slice) = stream.read(owned.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// Writes `buf[start..end]`; a write that makes no progress for `stalled` fails
/// with `TimedOut` (a peer that stopped reading: slow read). On a time-out the
/// buffer may be gone (an io_uring write owns it until the kernel lets go): the
/// connection is done with then anyway.
pub async fn write_range(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    start: usize,
    end: usize,
    stalled: Duration,
) -> io::Result<()> {
    let (res, back) = send(stream, std::mem::take(buf), start, end, stalled).await;
    if let Some(back) = back {
        *buf = back;
    }
    res
}

/// Writes `buf[start..end]`, each write within `stalled`; the buffer comes back
/// unless a write timed out holding it.
pub async fn send<T: IoBuf>(
    stream: &mut Stream,
    mut buf: T,
    start: usize,
    end: usize,
    stalled: Duration,
) -> (io::Result<()>, Option<T>) {
    let mut at = start;
    while at < end {
        let Some((res, slice)) = unless_stalled(stream.write(buf.slice(at..end)), stalled).await
        else {
            return (Err(stalled_out(stream)), None);
        };
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), Some(buf)),
            Ok(n) => at += n,
            Err(e) => return (Err(e), Some(buf)),
        }
    }
    (Ok(()), Some(buf))
}

/// A write, given up after `stalled` (`None`). One the socket takes at once
/// (the common case on epoll) arms no timer.
async fn unless_stalled<F: Future>(write: F, stalled: Duration) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(done) => Some(done),
        Poll::Pending => monoio::time::timeout(stalled, write).await.ok(),
    }
}

/// The error of a write given up (`unless_stalled`); the stream's close becomes a
/// reset (`Stream::reset_on_close`: nothing queued for a peer that stopped reading).
fn stalled_out(stream: &mut Stream) -> io::Error {
    stream.reset_on_close();
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer read nothing within the send timeout",
    )
}

/// Writes all of `buf`, each write within `stalled` (see `write_range`).
pub async fn write_all(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    stalled: Duration,
) -> io::Result<()> {
    let end = buf.len();
    write_range(stream, buf, 0, end, stalled).await
}

/// Writes `head`, then `body[from..to]`, gathered: one `writev` while the socket
/// takes both (a response's head and a body read apart from it go as one send),
/// what is left as `write_range` writes it; each write within `stalled`. On a
/// time-out the buffers may be gone, as `write_range`'s.
pub async fn write_two(
    stream: &mut Stream,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
    from: usize,
    to: usize,
    stalled: Duration,
) -> io::Result<()> {
    let both = Gather::new(std::mem::take(head), std::mem::take(body), from, to);
    let Some((res, both)) = unless_stalled(stream.writev(both), stalled).await else {
        return Err(stalled_out(stream));
    };
    (*head, *body) = (both.head, both.body);
    let n = match res {
        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
        Ok(n) => n,
        Err(e) => return Err(e),
    };
    // A short write: the head's rest, then the body's.
    let h = head.len();
    if n < h {
        write_range(stream, head, n, h, stalled).await?;
        return write_range(stream, body, from, to, stalled).await;
    }
    write_range(stream, body, from + (n - h), to, stalled).await
}

/// Two buffers for one `writev`: a whole head and a range of a body. The
/// iovecs are boxed: the kernel reads them from where the operation was made
/// (io_uring reads them at submission, after the operation has moved).
struct Gather {
    head: Vec<u8>,
    body: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

impl Gather {
    fn new(head: Vec<u8>, body: Vec<u8>, from: usize, to: usize) -> Self {
        let rest = &body[from..to];
        let iov = Box::new([
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            },
        ]);
        Self { head, body, iov }
    }
}

// SAFETY: the iovecs point into `head` and `body`, which this value owns and
// never changes while it lives; the iovec array is boxed, so its address stays
// put when the value moves.
unsafe impl monoio::buf::IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len()
    }
}

/// The writing side of a copy: a socket and how long a write may stall.
pub struct Sink<'a> {
    pub stream: &'a mut Stream,
    pub stalled: Duration,
}

/// The reading side of a copy: a socket and its buffer, of which `pos..` is unread.
pub struct Source<'a> {
    pub stream: &'a mut Stream,
    pub buf: &'a mut Vec<u8>,
    pub pos: &'a mut usize,
    pub read_timeout: Duration,
    /// A client's request body: the request's deadline (`request_timeout_ms`),
    /// which no trickle of bytes extends.
    pub deadline: Option<Instant>,
}

impl Source<'_> {
    async fn fill(&mut self) -> Result<(), PumpError> {
        if *self.pos == self.buf.len() {
            self.buf.clear();
            *self.pos = 0;
        }
        let wait = within(self.read_timeout, self.deadline)?;
        read_within(self.stream, self.buf, BODY_READ, wait).await
    }
}

/// How long the next read may wait: `idle`, cut short by `deadline`; a deadline
/// already passed is a time-out.
pub fn within(idle: Duration, deadline: Option<Instant>) -> Result<Duration, PumpError> {
    match deadline {
        None => Ok(idle),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(idle.min(left)),
            _ => Err(PumpError::ReadTimeout),
        },
    }
}

/// One read into `buf` (with at least `min_spare` room) that must come within `wait`;
/// end of stream is `ReadClosed`.
async fn read_within(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    wait: Duration,
) -> Result<(), PumpError> {
    match monoio::time::timeout(wait, read_more(stream, buf, min_spare)).await {
        Err(_) => Err(PumpError::ReadTimeout),
        Ok(Err(e)) => Err(PumpError::Read(e)),
        Ok(Ok(0)) => Err(PumpError::ReadClosed),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Reads until `buf` holds `want` bytes, each read within `wait`, all by
/// `deadline` if there is one.
pub async fn read_to(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    want: usize,
    wait: Duration,
    deadline: Option<Instant>,
) -> Result<(), PumpError> {
    while buf.len() < want {
        let spare = want - buf.len();
        read_within(stream, buf, spare, within(wait, deadline)?).await?;
    }
    Ok(())
}

/// Copies one body from `src` to `dst` (`None` discards it), returning its length.
/// `scratch` is reused for chunk framing. Bytes past the body stay unread in `src`.
pub async fn pump(
    src: &mut Source<'_>,
    mut dst: Option<Sink<'_>>,
    framing: Framing,
    encode: Encode,
    scratch: &mut Vec<u8>,
    limit: u64,
) -> Result<u64, PumpError> {
    let mut total: u64 = 0;
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            if n > limit {
                return Err(PumpError::TooLarge);
            }
            let mut remaining = n;
            while remaining > 0 {
                if *src.pos == src.buf.len() {
                    src.fill().await?;
                }
                let take = ((src.buf.len() - *src.pos) as u64).min(remaining) as usize;
                let start = *src.pos;
                emit(dst.as_mut(), src.buf, start, start + take, encode, scratch).await?;
                *src.pos += take;
                remaining -= take as u64;
                total += take as u64;
            }
        }
        Framing::UntilClose => loop {
            if *src.pos == src.buf.len() {
                match src.fill().await {
                    Err(PumpError::ReadClosed) => break,
                    other => other?,
                }
            }
            let (start, end) = (*src.pos, src.buf.len());
            total += (end - start) as u64;
            if total > limit {
                return Err(PumpError::TooLarge);
            }
            emit(dst.as_mut(), src.buf, start, end, encode, scratch).await?;
            *src.pos = end;
        },
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            loop {
                if *src.pos == src.buf.len() {
                    src.fill().await?;
                }
                match decoder
                    .decode(&src.buf[*src.pos..])
                    .map_err(PumpError::Framing)?
                {
                    Chunk::Data {
                        consumed,
                        start,
                        len,
                    } => {
                        let at = *src.pos + start;
                        total += len as u64;
                        if total > limit {
                            return Err(PumpError::TooLarge);
                        }
                        emit(dst.as_mut(), src.buf, at, at + len, encode, scratch).await?;
                        *src.pos += consumed;
                    }
                    Chunk::NeedMore => *src.pos = src.buf.len(),
                    Chunk::Done { consumed } => {
                        *src.pos += consumed;
                        break;
                    }
                }
            }
        }
    }
    if encode == Encode::Chunked {
        if let Some(d) = dst {
            scratch.clear();
            scratch.extend_from_slice(b"0\r\n\r\n");
            write_all(d.stream, scratch, d.stalled)
                .await
                .map_err(PumpError::Write)?;
        }
    }
    Ok(total)
}

async fn emit(
    dst: Option<&mut Sink<'_>>,
    buf: &mut Vec<u8>,
    start: usize,
    end: usize,
    encode: Encode,
    scratch: &mut Vec<u8>,
) -> Result<(), PumpError> {
    let Some(dst) = dst else { return Ok(()) };
    if start == end {
        return Ok(());
    }
    match encode {
        Encode::Raw => write_range(dst.stream, buf, start, end, dst.stalled).await,
        Encode::Chunked => {
            scratch.clear();
            push_hex(scratch, (end - start) as u64);
            scratch.extend_from_slice(b"\r\n");
            scratch.extend_from_slice(&buf[start..end]);
            scratch.extend_from_slice(b"\r\n");
            write_all(dst.stream, scratch, dst.stalled).await
        }
    }
    .map_err(PumpError::Write)
}

fn push_hex(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
