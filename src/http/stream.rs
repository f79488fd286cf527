//! The byte streams a worker reads and writes: plain TCP, or TLS over TCP (a client
//! connection on an HTTPS listener, or a connection to an `https://` upstream).
//!
//! TLS is rustls's buffered connection driven by the worker that owns the socket,
//! with monoio's owned-buffer I/O underneath: ciphertext is read into one buffer and
//! handed to rustls (which decrypts in place), and what rustls encrypts is written
//! from one buffer. `monoio-rustls` does the same, but hides the rustls connection
//! (no peer certificate, no SNI name, no way to tell whether decrypted bytes are
//! waiting), which a connection parked between requests needs.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};

/// Room asked for before a ciphertext read: a whole TLS record (16 KiB of data plus
/// its header and tag) fits, so a record rarely needs two reads.
const TLS_READ: usize = 17 * 1024;

pub enum Stream {
    Plain(TcpStream),
    /// A client connection on an HTTPS listener.
    Server(Box<TlsStream<ServerConnection>>),
    /// A connection to an `https://` upstream.
    Client(Box<TlsStream<ClientConnection>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(t) => &t.tcp,
            Stream::Client(t) => &t.tcp,
        }
    }

    /// Bytes already received and not yet read: decrypted data, or ciphertext not
    /// yet handed to rustls. Waiting for the socket to be readable would miss them.
    pub fn has_buffered(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Server(t) => t.has_buffered(),
            Stream::Client(t) => t.has_buffered(),
        }
    }

    /// Frees the TLS read and write buffers while the connection is idle.
    pub fn release(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(t) => t.release(),
            Stream::Client(t) => t.release(),
        }
    }

    /// Whether the peer has sent nothing since the last read and not closed: a
    /// one-byte `recv` with `MSG_PEEK | MSG_DONTWAIT` that would block. For an
    /// idle keep-alive connection, a FIN (a server's idle timeout, a restart) or
    /// any bytes at all (a TLS `close_notify`, garbage) mean it cannot carry the
    /// next request. Nothing is consumed; the driver's readiness is untouched.
    pub fn quiet(&self) -> bool {
        let mut b = 0u8;
        // SAFETY: the fd is owned by the stream and open; `b` outlives the call.
        let n = unsafe {
            libc::recv(
                self.tcp().as_raw_fd(),
                (&mut b as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Makes the close a reset (`SO_LINGER` 0): what is queued for a peer that
    /// stopped reading is dropped with the socket, instead of the kernel holding it
    /// (up to the send buffer, megabytes) and probing a closed window for minutes.
    pub fn reset_on_close(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the fd is owned by the stream and open; `linger` outlives the call.
        unsafe {
            libc::setsockopt(
                self.tcp().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// Ends the writing side: TLS `close_notify`, then a TCP half-close, so the
    /// peer reads everything written before it sees the end.
    pub async fn close_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(t) => t.close_notify().await?,
            Stream::Client(t) => t.close_notify().await?,
        }
        // SAFETY: the fd is owned by the stream and open for the duration of the call.
        let rc = unsafe { libc::shutdown(self.tcp().as_raw_fd(), libc::SHUT_WR) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsyncReadRent for Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Server(t) => t.read_into(buf).await,
            Stream::Client(t) => t.read_into(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if let Stream::Plain(s) = self {
            return s.readv(buf).await;
        }
        // SAFETY: the first iovec of `buf`, valid while `buf` is held here.
        let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = n {
            // SAFETY: `n` bytes of the first iovec were written.
            unsafe { buf.set_init(n) };
        }
        (n, buf)
    }
}

impl AsyncWriteRent for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write(buf).await,
            Stream::Server(t) => t.write_from(buf).await,
            Stream::Client(t) => t.write_from(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if let Stream::Plain(s) = self {
            return s.writev(buf).await;
        }
        // SAFETY: the first iovec of `buf`, valid while `buf` is held here.
        let n = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(raw) => self.write(raw).await.0,
            None => Ok(0),
        };
        (n, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.close_write().await
    }
}

/// rustls over a monoio TCP stream.
pub struct TlsStream<C> {
    tcp: TcpStream,
    pub conn: C,
    /// Ciphertext read from the socket; `rpos..` not yet taken by rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext rustls produced, on its way to the socket.
    wbuf: Vec<u8>,
    /// The peer closed the TCP stream.
    eof: bool,
    /// The epoll driver: socket reads go straight into `rbuf` (the syscall runs
    /// inside `poll`, so a dropped read leaves nothing pointing at it). io_uring
    /// reads take the buffer, as the kernel may fill it after a drop.
    in_place: bool,
}

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// `uring`: the worker runs the io_uring driver.
    pub fn new(tcp: TcpStream, conn: C, uring: bool) -> Self {
        Self {
            tcp,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            eof: false,
            in_place: !uring,
        }
    }

    /// Runs the handshake to its end (both sides' flights written).
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush_tls().await?;
                continue;
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the handshake",
                ));
            }
            self.receive().await?;
        }
        self.flush_tls().await
    }

    fn has_buffered(&mut self) -> bool {
        self.rpos < self.rbuf.len()
            || self
                .conn
                .process_new_packets()
                .map_or(true, |s| s.plaintext_bytes_to_read() > 0)
    }

    fn release(&mut self) {
        if self.rpos == self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
        if self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
    }

    /// Hands rustls buffered ciphertext, or reads more from the socket; decrypts.
    /// An error of the TLS protocol is answered with its alert before it returns.
    async fn receive(&mut self) -> io::Result<()> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
            if self.rbuf.capacity() < TLS_READ {
                self.rbuf.reserve(TLS_READ);
            }
            let n = if self.in_place {
                // SAFETY: `rbuf`'s room, valid while `self` is borrowed here; on the
                // epoll driver the read syscall runs inside `poll`.
                let raw = unsafe { RawBuf::new(self.rbuf.as_mut_ptr(), self.rbuf.capacity()) };
                let n = self.tcp.read(raw).await.0?;
                // SAFETY: the kernel initialised `n` bytes.
                unsafe { self.rbuf.set_len(n) };
                n
            } else {
                let owned = std::mem::take(&mut self.rbuf);
                let cap = owned.capacity();
                let (res, slice) = self.tcp.read(owned.slice_mut(0..cap)).await;
                self.rbuf = slice.into_inner();
                res?
            };
            if n == 0 {
                self.eof = true;
                // Tells rustls the stream ended (a close without close_notify).
                let _ = self.conn.read_tls(&mut io::empty());
                return Ok(());
            }
        }
        let mut src = &self.rbuf[self.rpos..];
        let before = src.len();
        // Fails only when rustls holds as much plaintext as it will: it is read
        // first, and the rest of the ciphertext waits here.
        let _ = self.conn.read_tls(&mut src);
        self.rpos += before - src.len();
        if let Err(e) = self.conn.process_new_packets() {
            // The alert rustls queued for the peer, best effort.
            let _ = self.flush_tls().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Writes out everything rustls has encrypted.
    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.wbuf.clear();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut self.wbuf)?;
            }
            let owned = std::mem::take(&mut self.wbuf);
            let (res, owned) = self.tcp.write_all(owned).await;
            self.wbuf = owned;
            res?;
        }
        Ok(())
    }

    async fn read_into<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: `buf`'s spare room, valid for writes while `buf` is held here;
        // rustls only writes into it.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        loop {
            match self.conn.reader().read(dst) {
                Ok(n) => {
                    // SAFETY: rustls wrote `n` bytes.
                    unsafe { buf.set_init(n) };
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: for HTTP/1.1 framing, an
                // end of stream like any other (a cut body is caught by its framing).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(0), buf),
                Err(e) => return (Err(e), buf),
            }
            if self.eof {
                return (Ok(0), buf);
            }
            if let Err(e) = self.receive().await {
                return (Err(e), buf);
            }
            // A key update or alert to answer.
            if self.conn.wants_write() {
                if let Err(e) = self.flush_tls().await {
                    return (Err(e), buf);
                }
            }
        }
    }

    async fn write_from<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `buf`'s initialised bytes, valid while `buf` is held here.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let mut done = 0;
        while done < src.len() {
            let n = match self.conn.writer().write(&src[done..]) {
                Ok(n) => n,
                Err(e) => return (Err(e), buf),
            };
            if n == 0 && !self.conn.wants_write() {
                return (Err(io::ErrorKind::WriteZero.into()), buf);
            }
            done += n;
            if let Err(e) = self.flush_tls().await {
                return (Err(e), buf);
            }
        }
        (Ok(done), buf)
    }

    async fn close_notify(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_tls().await
    }
}

/// A TLS stream's state driven by a tunnel (WebSocket pass-through), where one
/// task reads and another writes, each on its own duplicate of the socket: the
/// rustls state is borrowed only between awaits, never across one.
pub trait TunnelTls {
    /// Ciphertext read from the socket before the tunnel and not yet decrypted.
    fn take_unread(&mut self) -> Vec<u8>;
    /// Hands ciphertext to rustls (empty: the peer closed the socket); how much
    /// it took (it takes more once its plaintext is read).
    fn feed(&mut self, cipher: &[u8]) -> io::Result<usize>;
    /// Appends the plaintext rustls holds to `out`; `Ok(false)` once the peer has
    /// ended the stream (close_notify, or a close after everything).
    fn plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<bool>;
    /// Encrypts `plain` into `out`, with anything else rustls has to send.
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()>;
    /// The close_notify alert, into `out`.
    fn seal_close(&mut self, out: &mut Vec<u8>) -> io::Result<()>;
}

impl<C, SD> TunnelTls for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    fn take_unread(&mut self) -> Vec<u8> {
        let rest = self.rbuf[self.rpos..].to_vec();
        self.rpos = self.rbuf.len();
        rest
    }

    fn feed(&mut self, cipher: &[u8]) -> io::Result<usize> {
        if cipher.is_empty() {
            self.eof = true;
            let _ = self.conn.read_tls(&mut io::empty());
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            return Ok(0);
        }
        let mut src = cipher;
        // Fails only while rustls holds as much plaintext as it will.
        let _ = self.conn.read_tls(&mut src);
        let took = cipher.len() - src.len();
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(took)
    }

    fn plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(!self.eof),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut done = 0;
        loop {
            while self.conn.wants_write() {
                self.conn.write_tls(out)?;
            }
            if done == plain.len() {
                return Ok(());
            }
            let n = self.conn.writer().write(&plain[done..])?;
            if n == 0 && !self.conn.wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
    }

    fn seal_close(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.conn.send_close_notify();
        self.seal(&[], out)
    }
}

impl Stream {
    /// The TLS state of a TLS stream, for a tunnel; `None` for plain TCP.
    pub fn tunnel_tls(&mut self) -> Option<&mut dyn TunnelTls> {
        match self {
            Stream::Plain(_) => None,
            Stream::Server(t) => Some(&mut **t),
            Stream::Client(t) => Some(&mut **t),
        }
    }
}
