use std::{ffi::CString, io, path::Path};

#[allow(unused_variables)]
pub(super) fn cstr(p: &Path) -> io::Result<CString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(CString::new(p.as_os_str().as_bytes())?)
    }
    #[cfg(windows)]
    if let Some(s) = p.as_os_str().to_str() {
        Ok(CString::new(s)?)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid utf-8: corrupt contents",
        ))
    }
}

// Convert Duration to Timespec
// It's strange that io_uring does not impl From<Duration> for Timespec.
#[cfg(all(target_os = "linux", feature = "iouring"))]
pub(super) fn timespec(duration: std::time::Duration) -> io_uring::types::Timespec {
    io_uring::types::Timespec::new()
        .sec(duration.as_secs())
        .nsec(duration.subsec_nanos())
}

/// shardgate (PATCHED.md): the socket calls a request makes, as plain system
/// calls. glibc's `recv`, `send`, `writev`, `accept4`, `close` and the rest are
/// cancellation points: in a process with more than one thread each call
/// switches the thread's cancellation type on and off around the system call
/// (`__pthread_enable_asynccancel`, `__pthread_disable_asynccancel`, atomic
/// updates of the thread's cancel state). monoio's threads are never cancelled;
/// `syscall(2)` itself is no cancellation point.
#[cfg(target_os = "linux")]
#[allow(clippy::missing_safety_doc)]
pub(crate) mod nocancel {
    use libc::{c_int, c_long, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

    #[inline]
    pub(crate) unsafe fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
        let null = std::ptr::null_mut::<c_void>();
        libc::syscall(libc::SYS_recvfrom, fd as c_long, buf, len, flags as c_long, null, null) as ssize_t
    }

    #[inline]
    pub(crate) unsafe fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
        let null = std::ptr::null::<c_void>();
        libc::syscall(libc::SYS_sendto, fd as c_long, buf, len, flags as c_long, null, 0 as c_long) as ssize_t
    }

    #[inline]
    pub(crate) unsafe fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
        libc::syscall(libc::SYS_readv, fd as c_long, iov, n as c_long) as ssize_t
    }

    #[inline]
    pub(crate) unsafe fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
        libc::syscall(libc::SYS_writev, fd as c_long, iov, n as c_long) as ssize_t
    }

    #[inline]
    pub(crate) unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
        libc::syscall(libc::SYS_recvmsg, fd as c_long, msg, flags as c_long) as ssize_t
    }

    #[inline]
    pub(crate) unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
        libc::syscall(libc::SYS_sendmsg, fd as c_long, msg, flags as c_long) as ssize_t
    }

    #[inline]
    pub(crate) unsafe fn accept4(
        fd: c_int,
        addr: *mut sockaddr,
        len: *mut socklen_t,
        flags: c_int,
    ) -> c_int {
        libc::syscall(libc::SYS_accept4, fd as c_long, addr, len, flags as c_long) as c_int
    }

    #[inline]
    pub(crate) unsafe fn close(fd: c_int) -> c_int {
        libc::syscall(libc::SYS_close, fd as c_long) as c_int
    }
}

/// `syscall_u32!` for the calls in `nocancel`: the plain system call on Linux,
/// libc's wrapper elsewhere.
#[cfg(unix)]
#[macro_export]
macro_rules! syscall_nocancel_u32 {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[cfg(target_os = "linux")]
        let res = unsafe { $crate::driver::util::nocancel::$fn($($arg, )*) };
        #[cfg(not(target_os = "linux"))]
        let res = unsafe { libc::$fn($($arg, )*) };
        if res < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res as u32)
        }
    }};
}

/// Do syscall and return Result<T, std::io::Error>
#[cfg(unix)]
#[macro_export]
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Do syscall and return Result<T, std::io::Error>
#[cfg(windows)]
#[macro_export]
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ), $err_test: path, $err_value: expr) => {{
        let res = unsafe { $fn($($arg, )*) };
        if $err_test(&res, &$err_value) {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res.try_into().unwrap())
        }
    }};
}

/// Do syscall and return Result<T, std::io::Error>
#[macro_export]
macro_rules! syscall_u32 {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[cfg(windows)]
        let res = unsafe { $fn($($arg, )*) };
        #[cfg(unix)]
        let res = unsafe { libc::$fn($($arg, )*) };
        if res < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res as u32)
        }
    }};
}

#[cfg(all(
    not(all(target_os = "linux", feature = "iouring")),
    not(feature = "legacy")
))]
pub(crate) fn feature_panic() -> ! {
    panic!("one of iouring and legacy features must be enabled");
}
