//! `starlingctl` as a process: what it does without a node (help, usage errors, unreachable
//! node) and how it renders a node's answers, using a fake node on a temporary socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;

fn starlingctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starlingctl"))
        .args(args)
        .env_remove("STARLING_DATA_DIR")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_works_without_a_node() {
    let out = starlingctl(&["--socket", "/nonexistent/starling.sock", "help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for name in [
        "status",
        "register USER HOST PASSWORD",
        "connected_users_number",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    let out = starlingctl(&["help", "kick-session"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("kick_session USER HOST RESOURCE REASON"));

    let out = starlingctl(&["help", "nothing_like_this_at_all"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Unknown command"));
}

#[test]
fn unknown_command_is_a_usage_error_with_a_hint() {
    let out = starlingctl(&["registr", "a", "b", "c"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("Did you mean \"register\"?"), "{err}");
    assert!(err.contains("starlingctl help"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn wrong_argument_count_shows_the_usage_line() {
    let out = starlingctl(&["register", "alice", "example.org"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("missing PASSWORD"), "{err}");
    assert!(
        err.contains("Usage: starlingctl register USER HOST PASSWORD"),
        "{err}"
    );

    let out = starlingctl(&["status", "extra"]);
    assert_eq!(out.status.code(), Some(2));

    let out = starlingctl(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage: starlingctl"));

    let out = starlingctl(&["--no-such-option", "status"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreachable_node_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();

    // No socket file at all.
    let out = starlingctl(&["--data-dir", dir_arg, "status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    let expected = format!(
        "Failed RPC connection to the node at {}: is the server running?",
        dir.path().join("starling.sock").display()
    );
    assert!(err.contains(&expected), "{err}");

    // A stale socket file nobody listens on.
    drop(UnixListener::bind(dir.path().join("starling.sock")).unwrap());
    let out = starlingctl(&["--data-dir", dir_arg, "connected_users"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // The data directory from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_starlingctl"))
        .arg("status")
        .env("STARLING_DATA_DIR", dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("elsewhere"));
}

/// A node that reads one request line and answers `answer`; returns the request it got.
fn fake_node(path: &Path, answer: &'static str) -> thread::JoinHandle<String> {
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        (&stream).write_all(answer.as_bytes()).unwrap();
        request
    })
}

#[test]
fn answers_are_rendered_with_ejabberdctl_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let socket_arg = socket.to_str().unwrap();

    let node = fake_node(&socket, "{\"ok\":{\"list\":[\"a@x/r\",\"b@x/r\"]}}\n");
    let out = starlingctl(&["--socket", socket_arg, "connected-users"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "a@x/r\nb@x/r\n");
    // The canonical name is sent, whatever spelling was typed.
    assert_eq!(
        node.join().unwrap(),
        "{\"command\":\"connected_users\",\"args\":[]}\n"
    );
    std::fs::remove_file(&socket).unwrap();

    let node = fake_node(
        &socket,
        "{\"err\":{\"kind\":\"not_found\",\"message\":\"User bob@x does not exist\"}}\n",
    );
    let out = starlingctl(&["--socket", socket_arg, "check_account", "bob", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "User bob@x does not exist\n");
    assert!(stdout(&out).is_empty());
    node.join().unwrap();
    std::fs::remove_file(&socket).unwrap();

    let node = fake_node(&socket, "{\"ok\":{\"number\":42}}\n");
    let out = starlingctl(&["--socket", socket_arg, "connected_users_number"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "42\n");
    node.join().unwrap();
}
