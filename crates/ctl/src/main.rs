//! `starlingctl`: administer a running Starling node, the way `ejabberdctl` administers
//! ejabberd (DESIGN.md §10).
//!
//! The command line is checked against the shared registry ([`starling_commands::spec`],
//! compiled without the server side so this binary stays small) before anything is sent, so
//! `help`, unknown commands and usage errors work without a running node. Valid commands go to
//! the node's control socket as one JSON line; the answer is printed on stdout, or on stderr
//! for a failure.
//!
//! Exit codes are ejabberdctl's: 0 success, 1 the command failed, 2 usage error (unknown
//! command, wrong arguments), 3 the node is not reachable.
//!
//! The socket is `--socket PATH`, else `DATA_DIR/starling.sock` where DATA_DIR is
//! `--data-dir`, else the `data_dir` key of `--config FILE`, else `$STARLING_DATA_DIR`, else
//! `./data` (the server's default). Only the top-level `data_dir` key of the config file is
//! read: macros and included files are not expanded, and a relative path is taken from the
//! current directory, as the server does.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde::Deserialize;
use starling_commands::spec::{self, ErrorKind, Output, Request, Response};

/// Exit code: the command succeeded.
const EXIT_OK: u8 = 0;
/// Exit code: the command ran and failed, or a local error (unreadable config).
const EXIT_ERROR: u8 = 1;
/// Exit code: unknown command or wrong arguments.
const EXIT_USAGE: u8 = 2;
/// Exit code: no node answers on the control socket.
const EXIT_UNREACHABLE: u8 = 3;

/// The socket file's name inside the data directory; the server binds the same name.
const SOCKET_NAME: &str = "starling.sock";
/// The server's default `data_dir`.
const DEFAULT_DATA_DIR: &str = "data";
/// Environment variable naming the data directory when no option does.
const DATA_DIR_ENV: &str = "STARLING_DATA_DIR";

/// Administer a running Starling node.
#[derive(Debug, Parser)]
#[command(
    name = "starlingctl",
    version,
    about = "Administer a running Starling node (ejabberdctl-compatible commands)",
    after_help = "Run `starlingctl help` to list the commands, `starlingctl help COMMAND` for one.\n\
                  `starlingctl [--config FILE] check [--no-dns]` checks a configuration, its\n\
                  certificates, DNS records and ports without a running node.\n\
                  Exit codes: 0 ok, 1 error, 2 usage, 3 node unreachable."
)]
struct Cli {
    /// Control socket of the node [default: DATA_DIR/starling.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Read `data_dir` from this config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The node's data directory [default: $STARLING_DATA_DIR, else ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The command to run, e.g. `status` or `register`.
    command: Option<String>,
    /// The command's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Prints `--help`/`--version` on stdout (exit 0), errors on stderr (exit 2).
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_USAGE));
        }
    };
    ExitCode::from(run(&cli, std::env::var_os(DATA_DIR_ENV)))
}

/// Runs the command line; returns the exit code.
fn run(cli: &Cli, env_data_dir: Option<OsString>) -> u8 {
    let Some(name) = cli.command.as_deref() else {
        eprintln!(
            "Usage: starlingctl [--socket PATH] [--config FILE] [--data-dir DIR] COMMAND [ARGS...]\n"
        );
        eprintln!("{}", spec::help_text());
        return EXIT_USAGE;
    };
    if name == "check" {
        return check(cli);
    }
    let Some(command) = spec::find(name) else {
        eprintln!("{}", spec::unknown_command_message(name));
        eprintln!("Run `starlingctl help` to list the commands.");
        return EXIT_USAGE;
    };
    if let Err(e) = command.validate(&cli.args) {
        eprintln!("Error: {}", e.problem_text());
        eprintln!("Usage: starlingctl {}", e.usage);
        return EXIT_USAGE;
    }
    // `help` is answered from the registry, so it works without a node.
    if command.name == "help" {
        return print_response(&spec::help(&cli.args));
    }
    let socket = match socket_path(cli, env_data_dir) {
        Ok(path) => path,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_ERROR;
        }
    };
    let mut args = cli.args.clone();
    if matches!(
        command.name,
        "backup" | "restore" | "import_piefxis" | "export_piefxis"
    ) {
        // The node runs elsewhere (its own working directory): send an absolute path.
        if let Some(file) = args.first_mut()
            && let Ok(absolute) = std::path::absolute(&*file)
        {
            *file = absolute.to_string_lossy().into_owned();
        }
    }
    let request = Request {
        command: command.name.to_owned(),
        args,
    };
    match call(&socket, &request) {
        Ok(Some(response)) => print_response(&response),
        // The node went away before answering: for `stop` that is the expected outcome.
        Ok(None) if command.name == "stop" => EXIT_OK,
        Ok(None) => {
            eprintln!("The node closed the connection without answering.");
            EXIT_ERROR
        }
        Err(CallError::Unreachable(e)) => {
            eprintln!(
                "Failed RPC connection to the node at {}: is the server running? \
                 (start it with `starling`)",
                socket.display()
            );
            eprintln!("({e})");
            EXIT_UNREACHABLE
        }
        Err(CallError::Io(e)) => {
            eprintln!("Error talking to the node at {}: {e}", socket.display());
            EXIT_ERROR
        }
        Err(CallError::Protocol(e)) => {
            eprintln!(
                "Unexpected answer from the node at {}: {e}",
                socket.display()
            );
            EXIT_ERROR
        }
    }
}

/// `check`: runs `starling --check` (the server binary next to this one, else from `PATH`),
/// which has the config loader and module catalogue this small binary leaves out.
fn check(cli: &Cli) -> u8 {
    let sibling = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("starling"))
        .filter(|p| p.is_file());
    let program = sibling.unwrap_or_else(|| PathBuf::from("starling"));
    let mut command = std::process::Command::new(&program);
    command.arg("--check");
    if let Some(config) = &cli.config {
        command.arg("--config").arg(config);
    }
    if let Some(dir) = &cli.data_dir {
        command.arg("--data-dir").arg(dir);
    }
    for arg in &cli.args {
        if arg != "--no-dns" {
            eprintln!("Error: unknown option {arg:?} for check");
            eprintln!("Usage: starlingctl [--config FILE] check [--no-dns]");
            return EXIT_USAGE;
        }
        command.arg(arg);
    }
    match command.status() {
        Ok(status) if status.success() => EXIT_OK,
        Ok(_) => EXIT_ERROR,
        Err(e) => {
            eprintln!(
                "Cannot run {}: {e} (install the starling binary next to starlingctl or on PATH)",
                program.display()
            );
            EXIT_ERROR
        }
    }
}

/// Prints a response where ejabberdctl would (stdout or stderr) and returns its exit code.
fn print_response(response: &Response) -> u8 {
    match response {
        Response::Ok(output) => {
            print_stdout(output);
            EXIT_OK
        }
        Response::Err { kind, message } => {
            eprintln!("{message}");
            if matches!(kind, ErrorKind::UnknownCommand) {
                eprintln!("Run `starlingctl help` to list the commands.");
            }
            kind.exit_code()
        }
    }
}

fn print_stdout(output: &Output) {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`starlingctl registered_users h | head`) is not an error worth reporting.
    let _ = stdout.write_all(output.render().as_bytes());
    let _ = stdout.flush();
}

/// Where the node's control socket is, from the options, the config file or the environment.
fn socket_path(cli: &Cli, env_data_dir: Option<OsString>) -> Result<PathBuf, String> {
    if let Some(socket) = &cli.socket {
        return Ok(socket.clone());
    }
    let data_dir = if let Some(dir) = &cli.data_dir {
        dir.clone()
    } else if let Some(file) = &cli.config {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("Cannot read the config file {}: {e}", file.display()))?;
        match config_data_dir(&text) {
            Ok(Some(dir)) => dir,
            Ok(None) => default_data_dir(env_data_dir),
            Err(e) => {
                return Err(format!(
                    "Cannot read data_dir from the config file {}: {e}",
                    file.display()
                ));
            }
        }
    } else {
        default_data_dir(env_data_dir)
    };
    Ok(data_dir.join(SOCKET_NAME))
}

fn default_data_dir(env_data_dir: Option<OsString>) -> PathBuf {
    env_data_dir
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from)
}

/// The top-level `data_dir` of an ejabberd.yml-shaped file; every other key is skipped
/// unvalidated (the server validates the file, not this tool).
fn config_data_dir(text: &str) -> Result<Option<PathBuf>, serde_saphyr::Error> {
    #[derive(Deserialize)]
    struct DataDirOnly {
        data_dir: Option<String>,
    }
    // An empty file is a valid (empty) config: everything defaults.
    if text.trim().is_empty() {
        return Ok(None);
    }
    let parsed: Option<DataDirOnly> = serde_saphyr::from_str(text)?;
    Ok(parsed.and_then(|c| c.data_dir).map(PathBuf::from))
}

/// Why a call did not produce an answer.
#[derive(Debug)]
enum CallError {
    /// Nothing listens at the socket path (missing file, connection refused, ...).
    Unreachable(std::io::Error),
    /// The connection failed after it was established.
    Io(std::io::Error),
    /// The node's answer is not a response line.
    Protocol(serde_json::Error),
}

/// Sends one request; `Ok(None)` if the node closed the connection without answering.
fn call(socket: &Path, request: &Request) -> Result<Option<Response>, CallError> {
    let stream = UnixStream::connect(socket).map_err(CallError::Unreachable)?;
    let mut line = serde_json::to_vec(request).map_err(CallError::Protocol)?;
    line.push(b'\n');
    let mut writer = &stream;
    writer.write_all(&line).map_err(CallError::Io)?;
    writer.flush().map_err(CallError::Io)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    let n = reader.read_line(&mut answer).map_err(CallError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(CallError::Protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("starlingctl").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn command_arguments_may_start_with_a_dash() {
        let c = cli(&["register", "alice", "example.org", "-secret", "--x"]);
        assert_eq!(c.command.as_deref(), Some("register"));
        assert_eq!(c.args, vec!["alice", "example.org", "-secret", "--x"]);
        let c = cli(&["--socket", "/tmp/s", "status"]);
        assert_eq!(c.socket, Some(PathBuf::from("/tmp/s")));
        assert!(c.args.is_empty());
    }

    #[test]
    fn socket_path_precedence() {
        let env = Some(OsString::from("/env/dir"));
        assert_eq!(
            socket_path(
                &cli(&["--socket", "/s", "--data-dir", "/d", "status"]),
                env.clone()
            ),
            Ok(PathBuf::from("/s"))
        );
        assert_eq!(
            socket_path(&cli(&["--data-dir", "/d", "status"]), env.clone()),
            Ok(PathBuf::from("/d/starling.sock"))
        );
        assert_eq!(
            socket_path(&cli(&["status"]), env),
            Ok(PathBuf::from("/env/dir/starling.sock"))
        );
        assert_eq!(
            socket_path(&cli(&["status"]), None),
            Ok(PathBuf::from("data/starling.sock"))
        );
        assert_eq!(
            socket_path(&cli(&["status"]), Some(OsString::new())),
            Ok(PathBuf::from("data/starling.sock"))
        );
    }

    #[test]
    fn socket_path_from_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starling.yml");
        std::fs::write(
            &file,
            "hosts:\n  - example.org\ndata_dir: /var/lib/starling\nmodules:\n  mod_roster: {}\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        assert_eq!(
            socket_path(&cli(&["--config", file_arg, "status"]), None),
            Ok(PathBuf::from("/var/lib/starling/starling.sock"))
        );
        // --data-dir wins over the file.
        assert_eq!(
            socket_path(
                &cli(&["--config", file_arg, "--data-dir", "/d", "status"]),
                None
            ),
            Ok(PathBuf::from("/d/starling.sock"))
        );
        let missing = dir.path().join("missing.yml");
        let err = socket_path(
            &cli(&["--config", missing.to_str().unwrap(), "status"]),
            None,
        )
        .unwrap_err();
        assert!(err.starts_with("Cannot read the config file"), "{err}");
    }

    #[test]
    fn config_data_dir_reads_only_that_key() {
        assert_eq!(
            config_data_dir("data_dir: /srv/x\n").unwrap(),
            Some(PathBuf::from("/srv/x"))
        );
        assert_eq!(config_data_dir("hosts: [a.org]\n").unwrap(), None);
        assert_eq!(config_data_dir("").unwrap(), None);
        assert_eq!(config_data_dir("# only a comment\n").unwrap(), None);
        // Other keys, however exotic, are skipped.
        assert_eq!(
            config_data_dir(
                "listen:\n  - port: 5222\n    module: ejabberd_c2s\nacl: {admin: {user: [a@b]}}\n\
                 data_dir: rel/dir\n"
            )
            .unwrap(),
            Some(PathBuf::from("rel/dir"))
        );
        assert!(config_data_dir("data_dir: [not, a, string]\n").is_err());
        assert!(config_data_dir("data_dir: \"unterminated\n").is_err());
    }

    #[test]
    fn exit_codes_follow_ejabberdctl() {
        assert_eq!(print_response(&Response::Ok(Output::Nothing)), EXIT_OK);
        assert_eq!(
            print_response(&Response::err(ErrorKind::Failed, "no")),
            EXIT_ERROR
        );
        assert_eq!(
            print_response(&Response::err(ErrorKind::Usage, "no")),
            EXIT_USAGE
        );
        assert_eq!(
            run(
                &cli(&["--socket", "/nonexistent/starling.sock", "status"]),
                None
            ),
            EXIT_UNREACHABLE
        );
        assert_eq!(run(&cli(&["frobnicate"]), None), EXIT_USAGE);
        assert_eq!(run(&cli(&["register", "a"]), None), EXIT_USAGE);
        assert_eq!(run(&cli(&[]), None), EXIT_USAGE);
    }
}
