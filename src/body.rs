//! Streaming message bodies: copy a body framed one way (`Content-Length`, chunked,
//! until close) from one socket to another, re-framing as needed, never holding more
//! than one read buffer of it. Buffers move into monoio's owned-buffer I/O and back.

use std::io;
use std::time::Duration;

use crate::stream::Stream;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use crate::parse::{Chunk, ChunkError, ChunkedDecoder, Framing};

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

/// Writes `buf[start..end]`.
pub async fn write_range(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    start: usize,
    end: usize,
) -> io::Result<()> {
    if start == end {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let (res, slice) = stream.write_all(owned.slice(start..end)).await;
    *buf = slice.into_inner();
    res.map(|_| ())
}

/// Writes all of `buf`.
pub async fn write_all(stream: &mut Stream, buf: &mut Vec<u8>) -> io::Result<()> {
    let end = buf.len();
    write_range(stream, buf, 0, end).await
}

/// The reading side of a copy: a socket and its buffer, of which `pos..` is unread.
pub struct Source<'a> {
    pub stream: &'a mut Stream,
    pub buf: &'a mut Vec<u8>,
    pub pos: &'a mut usize,
    pub read_timeout: Duration,
}

impl Source<'_> {
    async fn fill(&mut self) -> Result<(), PumpError> {
        if *self.pos == self.buf.len() {
            self.buf.clear();
            *self.pos = 0;
        }
        read_within(self.stream, self.buf, BODY_READ, self.read_timeout).await
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

/// Reads until `buf` holds `want` bytes, each read within `wait`.
pub async fn read_to(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    want: usize,
    wait: Duration,
) -> Result<(), PumpError> {
    while buf.len() < want {
        let spare = want - buf.len();
        read_within(stream, buf, spare, wait).await?;
    }
    Ok(())
}

/// Copies one body from `src` to `dst` (`None` discards it), returning its length.
/// `scratch` is reused for chunk framing. Bytes past the body stay unread in `src`.
pub async fn pump(
    src: &mut Source<'_>,
    mut dst: Option<&mut Stream>,
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
                emit(
                    dst.as_deref_mut(),
                    src.buf,
                    start,
                    start + take,
                    encode,
                    scratch,
                )
                .await?;
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
            emit(dst.as_deref_mut(), src.buf, start, end, encode, scratch).await?;
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
                        emit(dst.as_deref_mut(), src.buf, at, at + len, encode, scratch).await?;
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
            write_all(d, scratch).await.map_err(PumpError::Write)?;
        }
    }
    Ok(total)
}

async fn emit(
    dst: Option<&mut Stream>,
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
        Encode::Raw => write_range(dst, buf, start, end).await,
        Encode::Chunked => {
            scratch.clear();
            push_hex(scratch, (end - start) as u64);
            scratch.extend_from_slice(b"\r\n");
            scratch.extend_from_slice(&buf[start..end]);
            scratch.extend_from_slice(b"\r\n");
            write_all(dst, scratch).await
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
