//! The sockets the server listens on, in Gunicorn's `--bind` forms (`HOST:PORT`,
//! `[::1]:PORT`, `unix:PATH`, `fd://N`) or passed by systemd, and the one accept loop's
//! wait on all of them at once.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustix::event::{PollFd, PollFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// One `--bind` address, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// A host name or address, and a port.
    Tcp(String, u16),
    Unix(PathBuf),
    /// A listening socket this process inherited, by descriptor number.
    Fd(RawFd),
}

impl std::str::FromStr for Bind {
    type Err = String;

    fn from_str(text: &str) -> Result<Bind, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("unix: needs a path, as in unix:/run/wasm-gw.sock".into());
            }
            return Ok(Bind::Unix(path.into()));
        }
        if let Some(number) = text.strip_prefix("fd://") {
            return number
                .parse::<RawFd>()
                .ok()
                .filter(|&fd| fd >= 0)
                .map(Bind::Fd)
                .ok_or_else(|| format!("{number:?} is not a file descriptor number"));
        }
        // `[::1]:8000`, `0.0.0.0:8000`, `localhost:8000`; a bare host gets Gunicorn's 8000.
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("{port:?} is not a port number"))?;
                (host, port)
            }
            _ => (text, 8000),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!(
                "{text:?} names no host: use 0.0.0.0:PORT for every address"
            ));
        }
        Ok(Bind::Tcp(host.to_owned(), port))
    }
}

/// Where a connection came from: an IP peer, or a process on this machine through a Unix
/// socket, which has no address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Ip(SocketAddr),
    Local,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(address) => address.fmt(f),
            Peer::Local => f.write_str("unix"),
        }
    }
}

/// A listening socket, or one bound that listens once the server is ready.
pub struct Listener {
    socket: Socket,
    kind: Kind,
    /// The listen queue to open with [`Listener::listen`], while the socket is bound and
    /// not listening yet.
    backlog: Option<i32>,
}

enum Kind {
    /// The address connections arrive on, unless it is a wildcard: then each connection's
    /// own is asked for.
    Tcp(Option<SocketAddr>),
    /// The socket file, removed when the listener is dropped if this process made it.
    Unix { made: Option<SocketFile> },
}

impl Listener {
    /// Binds `bind`: with SO_REUSEADDR for TCP, so that a restarted server can bind while
    /// old connections sit in TIME_WAIT; a listen queue of `backlog`; and for `unix:`, a
    /// socket file of mode 0777 less `umask`.
    pub fn bind(bind: &Bind, backlog: i32, umask: u32) -> anyhow::Result<Listener> {
        match bind {
            Bind::Tcp(host, port) => bind_tcp(host, *port, backlog)
                .with_context(|| format!("cannot listen on {}", describe_tcp(host, *port))),
            Bind::Unix(path) => bind_unix(path, backlog, umask)
                .with_context(|| format!("cannot listen on unix:{}", path.display())),
            Bind::Fd(fd) => {
                Listener::inherited(*fd).with_context(|| format!("cannot listen on fd://{fd}"))
            }
        }
    }

    /// Takes the listening socket at descriptor `fd`, which this process inherited from
    /// whoever started it (`fd://N`, or systemd's `LISTEN_FDS`).
    pub fn inherited(fd: RawFd) -> anyhow::Result<Listener> {
        // Checked open before it is owned: closing a descriptor that some other part of the
        // process owns would be worse than refusing to start.
        rustix::io::fcntl_getfd(
            // SAFETY: the borrow lives for this call only; fcntl on a closed descriptor
            // fails with EBADF, which is the answer wanted.
            unsafe { BorrowedFd::borrow_raw(fd) },
        )
        .map_err(|_| anyhow::anyhow!("descriptor {fd} is not open"))?;
        // SAFETY: the descriptor is open, and the user (or systemd) handed it to this
        // process to serve on: nothing else in the process owns it.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !socket.is_listener().unwrap_or(false) {
            // Not ours after all: give it back rather than close it.
            std::mem::forget(socket);
            anyhow::bail!("descriptor {fd} is not a listening socket");
        }
        let local = socket.local_addr()?;
        let kind = match local.as_socket() {
            Some(address) => {
                // As a socket of our own would be: connections get TCP_NODELAY from it.
                socket.set_tcp_nodelay(true)?;
                Kind::Tcp(Some(address).filter(|address| !address.ip().is_unspecified()))
            }
            None if local.is_unix() => Kind::Unix { made: None },
            None => anyhow::bail!("descriptor {fd} is neither a TCP nor a Unix socket"),
        };
        // Accepts wait in poll, never in accept.
        socket.set_nonblocking(true)?;
        Ok(Listener {
            socket,
            kind,
            backlog: None,
        })
    }

    /// Starts listening, if it does not yet: a TCP socket is bound early (by root, for a
    /// port below 1024) and listens only once the apps are loaded, so that until then a
    /// client is refused, as by a server not started yet, rather than left waiting in a
    /// backlog while the apps compile.
    pub fn listen(&mut self) -> io::Result<()> {
        if let Some(backlog) = self.backlog.take() {
            self.socket.listen(backlog)?;
        }
        Ok(())
    }

    /// Accepts a connection that has arrived; `None` if none has.
    pub fn accept(&self) -> io::Result<Option<(Socket, Peer)>> {
        let (socket, address) = match self.socket.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) => return Err(error),
        };
        // Accepted sockets don't inherit O_NONBLOCK on Linux; the connection's own calls
        // choose whether to wait.
        let peer = address.as_socket().map_or(Peer::Local, Peer::Ip);
        Ok(Some((socket, peer)))
    }

    /// The address `connection`, accepted here, arrived on: the listener's own unless it is
    /// a wildcard; `None` on a Unix socket, whose connections have no address.
    pub fn local_of(&self, connection: &Socket) -> io::Result<Option<SocketAddr>> {
        match &self.kind {
            Kind::Tcp(Some(address)) => Ok(Some(*address)),
            Kind::Tcp(None) => Ok(connection.local_addr()?.as_socket()),
            Kind::Unix { .. } => Ok(None),
        }
    }

    /// The socket file this process made for it, if it is a Unix socket it bound.
    pub fn socket_file(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Unix { made: Some(file) } => Some(&file.0),
            _ => None,
        }
    }

    /// The TCP address it listens on, if it is a TCP socket.
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()?.as_socket()
    }

    /// How the startup line names it, for `scheme`: `http://127.0.0.1:8000`,
    /// `https://[::1]:8443`, `unix:/run/x.sock`.
    pub fn describe(&self, scheme: &str) -> String {
        match self.socket.local_addr() {
            Ok(address) => match address.as_socket() {
                Some(address) => format!("{scheme}://{address}"),
                None => match address.as_pathname() {
                    Some(path) => format!("unix:{}", path.display()),
                    None => "an unnamed Unix socket".into(),
                },
            },
            Err(_) => "a socket".into(),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn describe_tcp(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn bind_tcp(host: &str, port: u16, backlog: i32) -> anyhow::Result<Listener> {
    let address = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such address"))?;
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    // Responses are written whole or in large pieces; Nagle's delay only adds latency.
    // Accepted connections inherit it.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    let address = socket.local_addr()?.as_socket();
    Ok(Listener {
        socket,
        kind: Kind::Tcp(address.filter(|address| !address.ip().is_unspecified())),
        backlog: Some(backlog),
    })
}

fn bind_unix(path: &Path, backlog: i32, umask: u32) -> anyhow::Result<Listener> {
    remove_stale_socket(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let file = SocketFile(path.to_owned());
    // Set on the file rather than through the process's umask, which other threads'
    // files would share for the while.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777 & !umask))
        .context("cannot set the socket file's mode")?;
    // Listening at once, unlike TCP: a socket file that refuses connections looks stale to
    // the next server started on the same path, which would replace it.
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(Listener {
        socket,
        kind: Kind::Unix { made: Some(file) },
        backlog: None,
    })
}

/// Removes the socket file a server that is gone left at `path`. A file that is not a
/// socket is left alone, and so is a socket some server still answers on.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        anyhow::bail!("{} exists and is not a socket", path.display());
    }
    match UnixStream::connect(path) {
        Ok(_) => anyhow::bail!("another server is listening on {}", path.display()),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!("removing the stale socket file {}", path.display());
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("cannot check {}", path.display())),
    }
}

/// A socket file this process made, removed when its listener is dropped, so that the next
/// start finds no stale one.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The listening sockets systemd passed (socket activation: `LISTEN_FDS`, with `LISTEN_PID`
/// naming this process). It clears those variables, so that programs the server starts
/// don't take the sockets for theirs; the threads running by then (the epoch ticker, the
/// code cache's) never read the environment.
pub fn from_systemd() -> anyhow::Result<Vec<Listener>> {
    let mut passed = listenfd::ListenFd::from_env();
    (0..passed.len())
        .filter_map(|index| passed.take_raw_fd(index).transpose())
        .map(|fd| {
            let fd = fd.context("cannot take a socket systemd passed")?;
            Listener::inherited(fd).context("a socket systemd passed")
        })
        .collect()
}

/// Waits until one of `listeners` has a connection to accept, or `stop` is readable.
/// Returns the index of a ready listener, looking from `start` on so that a busy one can't
/// starve the others; `None` once `stop` is readable.
pub fn wait_for_any(
    listeners: &[Listener],
    stop: BorrowedFd<'_>,
    start: usize,
) -> io::Result<Option<usize>> {
    let mut fds: Vec<PollFd> = listeners
        .iter()
        .map(|listener| PollFd::new(listener, PollFlags::IN))
        .collect();
    fds.push(PollFd::from_borrowed_fd(stop, PollFlags::IN));
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    if fds.last().is_some_and(|fd| !fd.revents().is_empty()) {
        return Ok(None);
    }
    let count = listeners.len();
    Ok((0..count)
        .map(|offset| (start + offset) % count)
        .find(|&index| !fds[index].revents().is_empty()))
}

/// Whether a connection waits to be accepted on any of `listeners`.
pub fn any_ready(listeners: &[Listener]) -> bool {
    let mut fds: Vec<PollFd> = listeners
        .iter()
        .map(|listener| PollFd::new(listener, PollFlags::IN))
        .collect();
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|ready| ready > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_forms() {
        let parse = |text: &str| text.parse::<Bind>();
        assert_eq!(parse("127.0.0.1:80"), Ok(Bind::Tcp("127.0.0.1".into(), 80)));
        assert_eq!(parse("[::1]:8080"), Ok(Bind::Tcp("::1".into(), 8080)));
        assert_eq!(parse("localhost"), Ok(Bind::Tcp("localhost".into(), 8000)));
        assert_eq!(parse("[::]"), Ok(Bind::Tcp("::".into(), 8000)));
        assert_eq!(parse("0.0.0.0:0"), Ok(Bind::Tcp("0.0.0.0".into(), 0)));
        assert_eq!(
            parse("unix:/run/x.sock"),
            Ok(Bind::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            parse("unix:///run/x.sock"),
            Ok(Bind::Unix("/run/x.sock".into()))
        );
        assert_eq!(parse("fd://3"), Ok(Bind::Fd(3)));
        assert!(parse("fd://x").is_err());
        assert!(parse("fd://-1").is_err());
        assert!(parse("unix:").is_err());
        assert!(parse(":80").is_err());
        assert!(parse("host:http").is_err());
        assert!(parse("host:70000").is_err());
    }

    #[test]
    fn accepted_connections_have_nodelay_from_the_listener() {
        let mut listener = Listener::bind(&Bind::Tcp("127.0.0.1".into(), 0), 8, 0).unwrap();
        let address = listener.tcp_address().unwrap();
        // Bound, not listening yet: refused.
        assert!(std::net::TcpStream::connect(address).is_err());
        listener.listen().unwrap();
        let _client = std::net::TcpStream::connect(address).unwrap();
        let accepted = loop {
            if let Some((socket, _)) = listener.accept().unwrap() {
                break socket;
            }
            std::thread::yield_now();
        };
        assert!(accepted.tcp_nodelay().unwrap());
        assert!(!accepted.nonblocking().unwrap_or(true));
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
        let dir = std::env::temp_dir().join(format!("wasm-gw-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        // A socket file whose listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = Listener::bind(&Bind::Unix(path.clone()), 8, 0o077).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let error = Listener::bind(&Bind::Unix(path.clone()), 8, 0)
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("another server"), "{error:#}");
        drop(listener);
        assert!(
            !path.exists(),
            "the socket file is removed with its listener"
        );
        std::fs::write(&path, "not a socket").unwrap();
        let error = Listener::bind(&Bind::Unix(path.clone()), 8, 0)
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("not a socket"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
