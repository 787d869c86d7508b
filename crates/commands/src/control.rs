//! The control socket: the Unix socket `starlingctl` talks to (DESIGN.md §9, §10).
//!
//! Protocol: JSON lines. Each line from the client is one [`Request`]; the node answers each
//! with exactly one [`Response`] line, in order. A connection may carry several requests.
//!
//! Security: the socket file is made mode 0600 right after `bind`, and every connection's peer
//! credentials (`SO_PEERCRED`) are checked: only the node's own uid and root may run commands.
//! The uid check is what closes the short window between `bind` and `chmod` in which the
//! umask decides the mode. Our own uid is read from the socket file we just created (its owner)
//! because this crate forbids the `unsafe` a `getuid()` call needs.
//!
//! Robustness: a request line is bounded ([`MAX_REQUEST_BYTES`]); an idle connection is
//! dropped after [`IDLE_TIMEOUT`]; accept errors (EMFILE) back off instead of spinning. A stale
//! socket file left by a crashed node is replaced, but a live one (another node answers) makes
//! [`serve`] refuse to start. The accept loop ends when the node starts stopping, and the
//! socket file is removed.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use starling_core::Server;
use starling_core::server::NodeState;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::exec::execute;
use crate::spec::{ErrorKind, Request, Response};

/// Longest request line accepted, newline excluded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the control socket at `path` until the node starts stopping.
///
/// Fails if `path` exists and is not a socket, if another process answers on it, or if it
/// cannot be bound.
pub async fn serve(server: Arc<Server>, path: &Path) -> io::Result<()> {
    let listener = bind(path).await?;
    let own_uid = std::fs::metadata(path)?.uid();
    tracing::info!(path = %path.display(), "control socket listening");
    let mut state = server.state_changes();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(Arc::clone(&server), stream, own_uid));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Also completes at once if the node was already stopping, or if the sender is
            // gone (the node is being dropped): either way, stop serving.
            () = stopping(&mut state) => break,
        }
    }
    drop(listener);
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove control socket")
        }
    }
    tracing::info!(path = %path.display(), "control socket closed");
    Ok(())
}

/// Completes when the node is stopping (or the node is gone).
async fn stopping(state: &mut watch::Receiver<NodeState>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in the caller's select.
    let _ = state.wait_for(|s| *s == NodeState::Stopping).await;
}

/// Binds `path`, replacing a stale socket file but never a live one or a non-socket.
async fn bind(path: &Path) -> io::Result<UnixListener> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another node is already answering on the control socket {}",
                        path.display()
                    ),
                ));
            }
            // Nobody listens: a previous node died without cleaning up.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale control socket");
                tokio::fs::remove_file(path).await?;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot probe existing control socket {}: {e}",
                        path.display()
                    ),
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Only the node's own user and root may administer it.
fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

async fn handle(server: Arc<Server>, stream: UnixStream, own_uid: u32) {
    let allowed = match stream.peer_cred() {
        Ok(cred) if peer_allowed(cred.uid(), own_uid) => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "control socket connection refused: not the server's user or root"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "control socket peer credentials unavailable");
            false
        }
    };
    let (read, mut write) = stream.into_split();
    if !allowed {
        let denied = Response::err(
            ErrorKind::Denied,
            "Permission denied: run starlingctl as the server's user or root",
        );
        let _ = respond(&mut write, &denied).await;
        return;
    }
    let mut reader = BufReader::new(read);
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, read_request_line(&mut reader)).await {
            Err(_elapsed) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "control socket read failed");
                return;
            }
            Ok(Ok(line)) => line,
        };
        let response = match line {
            RequestLine::Eof => return,
            RequestLine::TooLong => {
                let resp = Response::err(
                    ErrorKind::Usage,
                    format!("Request longer than {MAX_REQUEST_BYTES} bytes"),
                );
                // The rest of the line is unread: the connection cannot be resynchronised.
                let _ = respond(&mut write, &resp).await;
                return;
            }
            RequestLine::Line(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            RequestLine::Line(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(req) => {
                    tracing::debug!(command = %req.command, "control command");
                    execute(&server, &req).await
                }
                Err(e) => Response::err(ErrorKind::Usage, format!("Malformed request: {e}")),
            },
        };
        if respond(&mut write, &response).await.is_err() {
            return;
        }
    }
}

/// One request line read from the client.
#[derive(Debug, PartialEq, Eq)]
enum RequestLine {
    /// The line without its newline.
    Line(Vec<u8>),
    /// More than [`MAX_REQUEST_BYTES`] before a newline.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// Reads up to a newline, never buffering more than [`MAX_REQUEST_BYTES`] + 1 bytes.
async fn read_request_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> io::Result<RequestLine> {
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_REQUEST_BYTES + 1).unwrap_or(u64::MAX);
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(RequestLine::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(RequestLine::Line(buf));
    }
    if buf.len() > MAX_REQUEST_BYTES {
        return Ok(RequestLine::TooLong);
    }
    // End of stream without a newline: still a request.
    Ok(RequestLine::Line(buf))
}

async fn respond<W: AsyncWriteExt + Unpin>(write: &mut W, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use tokio::io::AsyncBufReadExt;

    use super::*;
    use crate::exec::tests::test_server;
    use crate::spec::Output;

    async fn wait_for_socket(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(path).await.is_err() {
            assert!(Instant::now() < deadline, "control socket never came up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn round_trip(stream: &mut BufReader<UnixStream>, line: &[u8]) -> Response {
        stream.get_mut().write_all(line).await.unwrap();
        let mut answer = String::new();
        stream.read_line(&mut answer).await.unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    fn spawn_serve(server: &Arc<Server>, path: &Path) -> tokio::task::JoinHandle<io::Result<()>> {
        let (server, path) = (Arc::clone(server), path.to_owned());
        tokio::spawn(async move { serve(server, &path).await })
    }

    fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("starling.sock")
    }

    #[tokio::test]
    async fn socket_round_trip_and_stop() {
        let (server, dir) = test_server().await;
        let path = socket_path(&dir);
        let task = spawn_serve(&server, &path);
        wait_for_socket(&path).await;

        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut conn = BufReader::new(UnixStream::connect(&path).await.unwrap());
        assert_eq!(
            round_trip(
                &mut conn,
                b"{\"command\":\"connected_users_number\",\"args\":[]}\n"
            )
            .await,
            Response::Ok(Output::Number(0))
        );
        // Several requests on one connection, blank lines ignored.
        assert_eq!(
            round_trip(
                &mut conn,
                b"\n{\"command\":\"register\",\"args\":[\"a\",\"example.org\",\"p\"]}\n"
            )
            .await,
            Response::Ok(Output::Text(
                "User a@example.org successfully registered".into()
            ))
        );
        assert!(matches!(
            round_trip(&mut conn, b"not json\n").await,
            Response::Err {
                kind: ErrorKind::Usage,
                ..
            }
        ));
        assert_eq!(
            round_trip(&mut conn, b"{\"command\":\"stop\"}\n").await,
            Response::Ok(Output::Nothing)
        );
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve must end when the node stops")
            .unwrap()
            .unwrap();
        assert!(!path.exists(), "the socket file is removed on stop");
    }

    #[tokio::test]
    async fn oversized_request_is_refused() {
        let (server, dir) = test_server().await;
        let path = socket_path(&dir);
        let task = spawn_serve(&server, &path);
        wait_for_socket(&path).await;
        let mut conn = BufReader::new(UnixStream::connect(&path).await.unwrap());
        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let resp = round_trip(&mut conn, &big).await;
        assert_eq!(
            resp,
            Response::err(
                ErrorKind::Usage,
                format!("Request longer than {MAX_REQUEST_BYTES} bytes")
            )
        );
        server.begin_shutdown();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_refused() {
        let (server, dir) = test_server().await;
        let path = socket_path(&dir);
        // A socket file nobody listens on, as left by a crashed node.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let task = spawn_serve(&server, &path);
        wait_for_socket(&path).await;

        // A second node on the same path must refuse while the first one answers.
        let (other, _other_dir) = test_server().await;
        let err = serve(other, &path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(path.exists(), "the live socket is left alone");

        server.begin_shutdown();
        task.await.unwrap().unwrap();

        // A regular file is never deleted.
        std::fs::write(&path, b"data").unwrap();
        let (third, _third_dir) = test_server().await;
        let err = serve(third, &path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn request_lines_are_bounded() {
        let input: &[u8] = b"{\"command\":\"status\"}\nlast";
        let mut reader = BufReader::new(input);
        assert_eq!(
            read_request_line(&mut reader).await.unwrap(),
            RequestLine::Line(b"{\"command\":\"status\"}".to_vec())
        );
        assert_eq!(
            read_request_line(&mut reader).await.unwrap(),
            RequestLine::Line(b"last".to_vec())
        );
        assert_eq!(
            read_request_line(&mut reader).await.unwrap(),
            RequestLine::Eof
        );

        let exact = [vec![b'a'; MAX_REQUEST_BYTES], vec![b'\n']].concat();
        let mut reader = BufReader::new(exact.as_slice());
        assert_eq!(
            read_request_line(&mut reader).await.unwrap(),
            RequestLine::Line(vec![b'a'; MAX_REQUEST_BYTES])
        );
        let over = vec![b'a'; MAX_REQUEST_BYTES + 1];
        let mut reader = BufReader::new(over.as_slice());
        assert_eq!(
            read_request_line(&mut reader).await.unwrap(),
            RequestLine::TooLong
        );
    }

    #[test]
    fn only_own_uid_and_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
    }
}
