//! Runs commands against a node, with ejabberdctl's semantics and output formats.
//!
//! [`execute`] looks the command up in [`crate::spec`], validates the arguments against the
//! spec (so the socket, the HTTP API and ad-hoc commands all get the same usage errors), and
//! dispatches to one function per command. Failures carry an [`ErrorKind`] that decides
//! `starlingctl`'s exit code; messages name the account, host or session concerned.
//!
//! Decisions where ejabberd is silent or where we differ:
//! - `kick_session` closes the stream with `<policy-violation/>` (RFC 6120 §4.9.3.14) whose
//!   text is the operator's reason: the session is ended by policy, and a standard condition
//!   lets clients tell it from `<conflict/>` (replaced) and `<system-shutdown/>`.
//! - `unregister` deletes first, then closes the account's sessions with `<not-authorized/>`
//!   (the account no longer authorises them), so a client cannot log in again in between.
//!   Unlike ejabberd, unregistering an unknown account is an error (exit 1).
//! - Passwords are hashed (PBKDF2) on the blocking pool, never on a runtime worker.

use std::sync::Arc;
use std::time::Duration;

use starling_core::Server;
use starling_core::server::NodeState;
use starling_storage::StorageError;
use starling_xmpp::error::{StreamError, StreamErrorCondition};
use starling_xmpp::jid::{BareJid, nameprep};
use starling_xmpp::scram::Credentials;

use crate::spec::{self, CommandSpec, ErrorKind, Output, Request, Response};

/// Runs `req` on `server`: validates it against its spec, then executes it.
pub async fn execute(server: &Arc<Server>, req: &Request) -> Response {
    let Some(spec) = spec::find(&req.command) else {
        return Response::err(
            ErrorKind::UnknownCommand,
            spec::unknown_command_message(&req.command),
        );
    };
    if let Err(e) = spec.validate(&req.args) {
        return Response::err(ErrorKind::Usage, e.to_string());
    }
    match run(server, spec, &req.args).await {
        Ok(output) => Response::Ok(output),
        Err(Failure { kind, message }) => Response::Err { kind, message },
    }
}

/// A failed command, turned into [`Response::Err`] by [`execute`].
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn storage(e: &StorageError) -> Self {
        Self::new(ErrorKind::Internal, format!("Database error: {e}"))
    }
}

type Outcome = Result<Output, Failure>;

/// The argument at `i`; present because [`CommandSpec::validate`] ran first.
fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map_or("", String::as_str)
}

async fn run(server: &Arc<Server>, spec: &CommandSpec, args: &[String]) -> Outcome {
    match spec.name {
        "status" => status(server).await,
        "stop" => Ok(stop(server)),
        "register" => register(server, arg(args, 0), arg(args, 1), arg(args, 2)).await,
        "unregister" => unregister(server, arg(args, 0), arg(args, 1)).await,
        "change_password" => {
            change_password(server, arg(args, 0), arg(args, 1), arg(args, 2)).await
        }
        "join_cluster" => join_cluster(server, arg(args, 0)).await,
        "leave_cluster" => leave_cluster(server, arg(args, 0)).await,
        "cluster_status" | "list_cluster" => cluster_status(server),
        "check_account" => check_account(server, arg(args, 0), arg(args, 1)).await,
        "backup" => backup(server, arg(args, 0)).await,
        "restore" => restore(server, arg(args, 0)).await,
        "import_piefxis" => match crate::piefxis::import(server, absolute(arg(args, 0))?).await {
            Ok(summary) => Ok(Output::Text(summary.to_string())),
            Err(message) => Err(Failure::new(ErrorKind::Failed, message)),
        },
        "export_piefxis" => {
            match crate::piefxis::export(server, absolute(arg(args, 0))?, None).await {
                Ok(path) => Ok(Output::Text(format!("Exported to {}", path.display()))),
                Err(message) => Err(Failure::new(ErrorKind::Failed, message)),
            }
        }
        "registered_users" => registered_users(server, arg(args, 0)).await,
        "connected_users" => Ok(connected_users(server)),
        "connected_users_number" => Ok(Output::Number(
            u64::try_from(server.sm().count()).unwrap_or(u64::MAX),
        )),
        "incoming_s2s_number" | "outgoing_s2s_number" => {
            let incoming = spec.name == "incoming_s2s_number";
            let n = s2s_connections(server)
                .iter()
                .filter(|c| c.incoming == incoming)
                .count();
            Ok(Output::Number(u64::try_from(n).unwrap_or(u64::MAX)))
        }
        "s2s_connections" => Ok(Output::List(
            s2s_connections(server)
                .iter()
                .map(|c| {
                    format!(
                        "{} {} {} {} {} {}",
                        if c.incoming { "in" } else { "out" },
                        if c.local.is_empty() { "?" } else { &c.local },
                        c.remote,
                        c.addr.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                        if c.tls { "tls" } else { "plain" },
                        c.auth
                    )
                })
                .collect(),
        )),
        "stop_s2s_connections" => {
            if let Some(remote) = server.remote_router() {
                remote.stop_connections();
            }
            Ok(Output::Nothing)
        }
        "list_bans" => Ok(Output::List(
            server
                .list_bans()
                .iter()
                .map(|b| {
                    format!(
                        "{} {} {}",
                        starling_core::ban::key_label(b.key),
                        b.failures,
                        b.remaining.as_secs()
                    )
                })
                .collect(),
        )),
        "unban_ip" => {
            let Some(network) = starling_core::ban::Network::parse(arg(args, 0)) else {
                return Err(Failure::new(
                    ErrorKind::Failed,
                    format!("Invalid address or network {:?}", arg(args, 0)),
                ));
            };
            let removed = server.unban(&network);
            Ok(Output::Number(u64::try_from(removed).unwrap_or(u64::MAX)))
        }
        "kick_session" => kick_session(
            server,
            arg(args, 0),
            arg(args, 1),
            arg(args, 2),
            arg(args, 3),
        ),
        "create_room"
        | "destroy_room"
        | "muc_online_rooms"
        | "get_room_occupants"
        | "get_room_options"
        | "change_room_option"
        | "set_room_affiliation" => muc_command(server, spec, args).await,
        "help" => match spec::help(args) {
            Response::Ok(output) => Ok(output),
            Response::Err { kind, message } => Err(Failure { kind, message }),
        },
        "list" => Ok(Output::List(spec::list_lines())),
        // A spec without an implementation is a bug caught by the tests below, not a crash.
        other => Err(Failure::new(
            ErrorKind::Internal,
            format!("Command {other} is not implemented by this node"),
        )),
    }
}

async fn status(server: &Server) -> Outcome {
    let node = node_name(server).await;
    match server.state() {
        NodeState::Running => Ok(Output::Text(format!(
            "The node {node} is started. Status: started\n\
             Starling {} is running in that node\n\
             Uptime: {}; sessions: {}",
            env!("CARGO_PKG_VERSION"),
            format_uptime(server.uptime()),
            server.sm().count_local(),
        ))),
        NodeState::Stopping => Err(Failure::new(
            ErrorKind::Failed,
            format!(
                "The node {node} is stopping. Status: stopping\n\
                 Starling is not running in that node"
            ),
        )),
    }
}

fn stop(server: &Server) -> Output {
    tracing::info!("stop requested on the control socket");
    server.begin_shutdown();
    Output::Nothing
}

async fn register(server: &Server, user: &str, host: &str, password: &str) -> Outcome {
    let jid = account(server, user, host)?;
    let stores = server.stores();
    // Cheap check first, so a taken name does not cost a PBKDF2 run; `create` still reports
    // the race with a concurrent registration.
    if stores
        .exists(&jid)
        .await
        .map_err(|e| Failure::storage(&e))?
    {
        return Err(already_registered(&jid));
    }
    let creds = hash_password(password).await?;
    match stores.create(&jid, &creds).await {
        Ok(()) => {
            tracing::info!(jid = %jid, "account registered by an administrator");
            Ok(Output::Text(format!("User {jid} successfully registered")))
        }
        Err(StorageError::AlreadyExists) => Err(already_registered(&jid)),
        Err(e) => Err(Failure::storage(&e)),
    }
}

fn already_registered(jid: &BareJid) -> Failure {
    Failure::new(ErrorKind::Failed, format!("User {jid} already registered"))
}

fn no_such_user(jid: &BareJid) -> Failure {
    Failure::new(ErrorKind::NotFound, format!("User {jid} does not exist"))
}

async fn unregister(server: &Server, user: &str, host: &str) -> Outcome {
    let jid = account(server, user, host)?;
    let removed = server
        .remove_user(&jid, "Account removed")
        .await
        .map_err(|e| Failure::storage(&e))?;
    if !removed {
        return Err(no_such_user(&jid));
    }
    tracing::info!(jid = %jid, "account removed by an administrator");
    Ok(Output::Nothing)
}

async fn change_password(server: &Server, user: &str, host: &str, password: &str) -> Outcome {
    let jid = account(server, user, host)?;
    let creds = hash_password(password).await?;
    match server.stores().set_credentials(&jid, &creds).await {
        Ok(()) => {
            tracing::info!(jid = %jid, "password changed by an administrator");
            Ok(Output::Nothing)
        }
        Err(StorageError::NotFound) => Err(no_such_user(&jid)),
        Err(e) => Err(Failure::storage(&e)),
    }
}

async fn check_account(server: &Server, user: &str, host: &str) -> Outcome {
    let jid = account(server, user, host)?;
    match server.stores().exists(&jid).await {
        Ok(true) => Ok(Output::Nothing),
        Ok(false) => Err(no_such_user(&jid)),
        Err(e) => Err(Failure::storage(&e)),
    }
}

async fn registered_users(server: &Server, host: &str) -> Outcome {
    let host = local_host(server, host)?;
    server
        .stores()
        .list(&host)
        .await
        .map(Output::List)
        .map_err(|e| Failure::storage(&e))
}

fn s2s_connections(server: &Server) -> Vec<starling_core::server::RemoteConnection> {
    server
        .remote_router()
        .map(|r| r.connections())
        .unwrap_or_default()
}

/// A file argument: absolute, since the node's working directory is not the caller's
/// (`starlingctl` makes relative paths absolute before sending them).
fn absolute(file: &str) -> Result<&std::path::Path, Failure> {
    let path = std::path::Path::new(file);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(Failure::new(
            ErrorKind::Failed,
            format!("{file:?} is not an absolute path; give the full path"),
        ))
    }
}

async fn backup(server: &Server, file: &str) -> Outcome {
    let path = absolute(file)?;
    match server.stores().backup(path).await {
        Ok(()) => {
            tracing::info!(file, "database backed up");
            Ok(Output::Nothing)
        }
        Err(StorageError::AlreadyExists) => Err(Failure::new(
            ErrorKind::Failed,
            format!("{file} already exists; choose a new file name"),
        )),
        Err(e) => Err(Failure::new(
            ErrorKind::Failed,
            format!("Cannot back up: {e}"),
        )),
    }
}

async fn restore(server: &Server, file: &str) -> Outcome {
    let path = absolute(file)?;
    match server.stores().restore(path).await {
        Ok(rows) => {
            tracing::warn!(file, rows, "database restored from a backup");
            Ok(Output::Text(format!("Restored {rows} rows from {file}")))
        }
        Err(StorageError::NotFound) => Err(Failure::new(
            ErrorKind::NotFound,
            format!("{file}: no such file"),
        )),
        Err(e) => Err(Failure::new(
            ErrorKind::Failed,
            format!("Cannot restore {file}: {e}"),
        )),
    }
}

fn connected_users(server: &Server) -> Output {
    let mut jids: Vec<String> = server.sm().all().iter().map(ToString::to_string).collect();
    jids.sort();
    Output::List(jids)
}

fn kick_session(server: &Server, user: &str, host: &str, resource: &str, reason: &str) -> Outcome {
    let jid = account(server, user, host)?;
    let full = jid.with_resource(resource).map_err(|e| {
        Failure::new(
            ErrorKind::Failed,
            format!("Invalid resource {resource:?}: {e}"),
        )
    })?;
    let Some(session) = server.sm().get(&full) else {
        return Err(Failure::new(
            ErrorKind::NotFound,
            format!("Session {full} not found on this node"),
        ));
    };
    let mut error = StreamError::new(StreamErrorCondition::PolicyViolation);
    if !reason.is_empty() {
        error = error.with_text(reason);
    }
    session.close(error);
    tracing::info!(jid = %full, reason, "session kicked by an administrator");
    Ok(Output::Nothing)
}

/// Normalises `host` and checks that this node serves it.
/// Namespace of the MUC service's admin requests (`starling_modules::muc::service::ADMIN_NS`;
/// this crate does not depend on the modules).
const MUC_ADMIN_NS: &str = "urn:starling:muc:admin:0";
/// How long a MUC admin request may take.
const MUC_TIMEOUT: Duration = Duration::from_secs(10);

/// The MUC commands. They reach the service the way any entity would: an IQ from the host
/// to the service domain, answered by the service (see `starling_modules::muc`). This keeps
/// the commands crate free of module types and works wherever the room runs.
async fn muc_command(server: &Server, spec: &CommandSpec, args: &[String]) -> Outcome {
    let (service, args) = match spec.name {
        "muc_online_rooms" => (arg(args, 0), &args[..0]),
        _ => (arg(args, 1), args),
    };
    if spec.name == "muc_online_rooms" && service == "global" {
        let mut all = Vec::new();
        for host in server.hosts() {
            let Some(modules) = server.host_modules(&host) else {
                continue;
            };
            for svc in &modules.registrations.services {
                if let Ok(lines) = muc_request(server, &svc.domain, spec.name, &[]).await {
                    all.extend(lines);
                }
            }
        }
        all.sort();
        return Ok(Output::List(all));
    }
    let mut request_args: Vec<&str> = args.iter().map(String::as_str).collect();
    if spec.name != "muc_online_rooms" && request_args.len() > 1 {
        // The service is the request's address, not an argument.
        request_args.remove(1);
    }
    if spec.name == "create_room" {
        local_host(server, arg(args, 2))?;
        request_args.truncate(1);
    }
    let lines = muc_request(server, service, spec.name, &request_args).await?;
    Ok(match spec.result {
        spec::ResultKind::List => Output::List(lines),
        _ => Output::Nothing,
    })
}

/// Sends one admin request to a MUC service and returns the lines of its answer.
async fn muc_request(
    server: &Server,
    service: &str,
    name: &str,
    args: &[&str],
) -> Result<Vec<String>, Failure> {
    use starling_xmpp::Element;
    use starling_xmpp::jid::Jid;
    use starling_xmpp::stanza::{Stanza, element, text_element};

    let not_found = || Failure::new(ErrorKind::NotFound, format!("No MUC service {service}"));
    let domain = nameprep(service).map_err(|_| not_found())?;
    if server.route_for(&domain).is_none() {
        return Err(not_found());
    }
    let Some(host) = server
        .hosts()
        .into_iter()
        .find(|h| domain.ends_with(&format!(".{h}")))
        .or_else(|| server.hosts().into_iter().next())
    else {
        return Err(not_found());
    };
    let mut command = element("command", MUC_ADMIN_NS, &[("name", name)]);
    for a in args {
        command.append_child(text_element("arg", MUC_ADMIN_NS, a));
    }
    let id = format!("muc-admin-{}", uuid_like());
    let mut iq = element(
        "iq",
        starling_xmpp::ns::CLIENT,
        &[("type", "set"), ("id", &id)],
    );
    iq.append_child(command);
    // A request about one room goes to the room's JID, so that in a cluster it reaches the
    // node the room is placed on (`starling_core::placement`); a bad name goes to the service,
    // which says what is wrong with it.
    let room = (name != "muc_online_rooms")
        .then(|| args.first())
        .flatten()
        .and_then(|room| Jid::parse(&format!("{room}@{domain}")).ok());
    let (Ok(from), Some(to)) = (Jid::parse(&host), room.or_else(|| Jid::parse(&domain).ok()))
    else {
        return Err(not_found());
    };
    let request = Stanza::new(iq, from, to)
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("cannot build request: {e}")))?;
    let Some(answer) = server.iq_query(request, MUC_TIMEOUT).await else {
        return Err(Failure::new(
            ErrorKind::Internal,
            format!("{service} did not answer"),
        ));
    };
    if answer.is_error() {
        let error = answer
            .element()
            .children()
            .find(|c| c.name() == "error")
            .and_then(starling_xmpp::error::StanzaError::from_element);
        let text = error
            .as_ref()
            .and_then(|e| e.text.clone())
            .unwrap_or_else(|| "refused".to_owned());
        let kind = if text.contains("does not exist") {
            ErrorKind::NotFound
        } else {
            ErrorKind::Failed
        };
        return Err(Failure::new(kind, text));
    }
    Ok(answer
        .payload()
        .map(|r| {
            r.children()
                .filter(|c| c.is("line", MUC_ADMIN_NS))
                .map(Element::text)
                .collect()
        })
        .unwrap_or_default())
}

/// A request id unique enough within one node: time and a counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{t:x}-{n}")
}

fn local_host(server: &Server, host: &str) -> Result<String, Failure> {
    let domain = nameprep(host)
        .map_err(|e| Failure::new(ErrorKind::Failed, format!("Invalid host {host:?}: {e}")))?;
    if server.is_local(&domain) {
        Ok(domain)
    } else {
        Err(Failure::new(
            ErrorKind::NotFound,
            format!(
                "Unknown host {host}: this node serves {}",
                server.hosts().join(", ")
            ),
        ))
    }
}

/// The account JID `user@host`, normalised, on a host this node serves.
fn account(server: &Server, user: &str, host: &str) -> Result<BareJid, Failure> {
    let domain = local_host(server, host)?;
    BareJid::new(Some(user), &domain).map_err(|e| {
        Failure::new(
            ErrorKind::Failed,
            format!("Invalid user name {user:?}: {e}"),
        )
    })
}

/// Derives the SCRAM keys on the blocking pool: PBKDF2 would stall a runtime worker.
async fn hash_password(password: &str) -> Result<Credentials, Failure> {
    if password.is_empty() {
        return Err(Failure::new(ErrorKind::Failed, "The password is empty"));
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        Credentials::new(&password, Credentials::DEFAULT_ITERATIONS)
    })
    .await
    .map_err(|e| Failure::new(ErrorKind::Internal, format!("Password hashing failed: {e}")))?
    .map_err(|e| Failure::new(ErrorKind::Failed, format!("Invalid password: {e}")))
}

/// The node's name: the cluster `node_name`, else `starling@` and the machine's host name.
async fn node_name(server: &Server) -> String {
    if let Some(cluster) = &server.config().cluster {
        return cluster.node_name.clone();
    }
    // Read from procfs rather than through libc: this crate forbids unsafe code.
    let host = match tokio::fs::read_to_string("/proc/sys/kernel/hostname").await {
        Ok(h) if !h.trim().is_empty() => h.trim().to_owned(),
        _ => "localhost".to_owned(),
    };
    format!("starling@{host}")
}

/// `1d 2h 3m 4s`, leading zero units left out.
fn format_uptime(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m {seconds}s")
    } else if hours > 0 {
        format!("{hours}h {minutes}m {seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

fn no_cluster() -> Failure {
    Failure::new(
        ErrorKind::Failed,
        "this node is not clustered: add a cluster section (node_name, listen) to its \
         configuration, use PostgreSQL (sql_type: pgsql), and restart it",
    )
}

/// `join_cluster NODE`: NODE is the member's cluster address (`host:port`); the ejabberd-style
/// `name@host:port` is accepted and its name part ignored, since a name alone cannot be dialled.
async fn join_cluster(server: &Arc<Server>, node: &str) -> Outcome {
    let cluster = server.sm().cluster().ok_or_else(no_cluster)?;
    let address = node.rsplit_once('@').map_or(node, |(_, addr)| addr);
    match cluster.join(address).await {
        Ok(members) => Ok(Output::List(members)),
        Err(message) => Err(Failure::new(ErrorKind::Failed, message)),
    }
}

async fn leave_cluster(server: &Arc<Server>, node: &str) -> Outcome {
    let cluster = server.sm().cluster().ok_or_else(no_cluster)?;
    cluster
        .leave(node)
        .await
        .map(|()| Output::Nothing)
        .map_err(|message| Failure::new(ErrorKind::Failed, message))
}

fn cluster_status(server: &Arc<Server>) -> Outcome {
    let cluster = server.sm().cluster().ok_or_else(no_cluster)?;
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    Ok(Output::List(
        cluster
            .status()
            .iter()
            .map(|m| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    m.name,
                    m.address,
                    if m.up { "up" } else { "down" },
                    m.sessions,
                    opt(m.last_seen_ms),
                    opt(m.rtt_us),
                )
            })
            .collect(),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use starling_config::Config;
    use starling_storage_sql::SqlStore;
    use starling_xmpp::jid::FullJid;
    use tempfile::TempDir;

    use super::*;
    use crate::spec::COMMANDS;

    /// A node serving `example.org` on a fresh SQLite file, without modules.
    pub(crate) async fn test_server() -> (Arc<Server>, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(&dir.path().join("starling.db"))
            .await
            .unwrap();
        let mut config = Config::embedded_default(&[]);
        config.hosts = vec!["example.org".to_owned()];
        config.data_dir = dir.path().to_owned();
        let server = Server::new(config, Arc::new(store), &[]).unwrap();
        (server, dir)
    }

    async fn call(server: &Arc<Server>, command: &str, args: &[&str]) -> Response {
        let req = Request {
            command: command.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        execute(server, &req).await
    }

    fn err(kind: ErrorKind, message: &str) -> Response {
        Response::err(kind, message)
    }

    #[tokio::test]
    async fn list_bans_and_unban_ip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(&dir.path().join("starling.db"))
            .await
            .unwrap();
        let mut config = Config::embedded_default(&[]);
        config.data_dir = dir.path().to_owned();
        let mut options = starling_config::ModuleOptions::new();
        options.insert(
            "c2s_max_auth_failures",
            starling_config::OptionValue::Int(2),
        );
        config.modules.push(starling_config::ModuleConfig {
            name: starling_core::ban::MODULE.to_owned(),
            options,
        });
        let server = Server::new(config, Arc::new(store), &[]).unwrap();
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!server.auth_failed(ip));
        assert!(server.auth_failed(ip), "the second failure bans");
        let Response::Ok(Output::List(lines)) = call(&server, "list_bans", &[]).await else {
            panic!("list_bans failed");
        };
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("192.0.2.7 2 "), "{lines:?}");
        assert_eq!(server.counters().abuse().bans_total(), 1);
        assert_eq!(server.counters().abuse().bans_active(), 1);
        assert_eq!(
            call(&server, "unban_ip", &["192.0.2.0/24"]).await,
            Response::Ok(Output::Number(1))
        );
        assert!(server.banned(ip).is_none());
        assert_eq!(server.counters().abuse().bans_active(), 0);
        assert_eq!(
            call(&server, "list_bans", &[]).await,
            Response::Ok(Output::List(Vec::new()))
        );
        assert!(matches!(
            call(&server, "unban_ip", &["not-an-address"]).await,
            Response::Err {
                kind: ErrorKind::Failed,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn register_check_change_unregister() {
        let (server, _dir) = test_server().await;
        assert_eq!(
            call(&server, "register", &["Alice", "example.org", "pw"]).await,
            Response::Ok(Output::Text(
                "User alice@example.org successfully registered".into()
            ))
        );
        assert_eq!(
            call(&server, "register", &["alice", "EXAMPLE.org", "other"]).await,
            err(
                ErrorKind::Failed,
                "User alice@example.org already registered"
            )
        );
        assert_eq!(
            call(&server, "check_account", &["alice", "example.org"]).await,
            Response::Ok(Output::Nothing)
        );
        assert_eq!(
            call(&server, "check-account", &["bob", "example.org"]).await,
            err(ErrorKind::NotFound, "User bob@example.org does not exist")
        );

        let before = server
            .stores()
            .credentials(&BareJid::parse("alice@example.org").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            call(&server, "change_password", &["alice", "example.org", "new"]).await,
            Response::Ok(Output::Nothing)
        );
        let after = server
            .stores()
            .credentials(&BareJid::parse("alice@example.org").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(before, after, "the keys must change with the password");
        assert_eq!(
            call(&server, "change_password", &["bob", "example.org", "new"]).await,
            err(ErrorKind::NotFound, "User bob@example.org does not exist")
        );

        assert_eq!(
            call(&server, "register", &["bob", "example.org", "pw"]).await,
            Response::Ok(Output::Text(
                "User bob@example.org successfully registered".into()
            ))
        );
        assert_eq!(
            call(&server, "registered_users", &["example.org"]).await,
            Response::Ok(Output::List(vec!["alice".into(), "bob".into()]))
        );

        // Unregistering closes the account's sessions.
        let (_id, channels) = server
            .sm()
            .bind(FullJid::parse("alice@example.org/phone").unwrap(), None)
            .unwrap();
        assert_eq!(
            call(&server, "unregister", &["alice", "example.org"]).await,
            Response::Ok(Output::Nothing)
        );
        let closed = channels.close.borrow().clone().unwrap();
        assert_eq!(closed.condition, StreamErrorCondition::NotAuthorized);
        assert_eq!(
            call(&server, "unregister", &["alice", "example.org"]).await,
            err(ErrorKind::NotFound, "User alice@example.org does not exist")
        );
        assert_eq!(
            call(&server, "registered_users", &["example.org"]).await,
            Response::Ok(Output::List(vec!["bob".into()]))
        );
    }

    #[tokio::test]
    async fn unknown_host_and_invalid_names_are_reported() {
        let (server, _dir) = test_server().await;
        assert_eq!(
            call(&server, "register", &["alice", "other.org", "pw"]).await,
            err(
                ErrorKind::NotFound,
                "Unknown host other.org: this node serves example.org"
            )
        );
        assert_eq!(
            call(&server, "registered_users", &["other.org"]).await,
            err(
                ErrorKind::NotFound,
                "Unknown host other.org: this node serves example.org"
            )
        );
        let Response::Err { kind, message } =
            call(&server, "register", &["al@ice", "example.org", "pw"]).await
        else {
            panic!("an invalid user name must be refused")
        };
        assert_eq!(kind, ErrorKind::Failed);
        assert!(
            message.starts_with("Invalid user name \"al@ice\""),
            "{message}"
        );
        assert_eq!(
            call(&server, "register", &["alice", "example.org", ""]).await,
            err(ErrorKind::Failed, "The password is empty")
        );
        assert_eq!(
            call(&server, "registered_users", &["example.org"]).await,
            Response::Ok(Output::List(vec![]))
        );
    }

    #[tokio::test]
    async fn usage_and_unknown_commands() {
        let (server, _dir) = test_server().await;
        assert_eq!(
            call(&server, "register", &["alice", "example.org"]).await,
            err(
                ErrorKind::Usage,
                "register takes 3 argument(s) but 2 were given (missing PASSWORD)\n\
                 Usage: register USER HOST PASSWORD"
            )
        );
        assert_eq!(
            call(&server, "regster", &[]).await,
            err(
                ErrorKind::UnknownCommand,
                "Unknown command \"regster\". Did you mean \"register\"?"
            )
        );
        assert!(matches!(
            call(&server, "help", &["nope_nothing_like_it"]).await,
            Response::Err {
                kind: ErrorKind::UnknownCommand,
                ..
            }
        ));
        let Response::Ok(Output::List(lines)) = call(&server, "list", &[]).await else {
            panic!("list failed")
        };
        assert!(lines.contains(&"kick_session USER HOST RESOURCE REASON".to_owned()));
    }

    #[tokio::test]
    async fn sessions_listing_and_kick() {
        let (server, _dir) = test_server().await;
        let sm = server.sm();
        let (_a, phone) = sm
            .bind(FullJid::parse("bob@example.org/phone").unwrap(), None)
            .unwrap();
        let (_b, laptop) = sm
            .bind(FullJid::parse("alice@example.org/laptop").unwrap(), None)
            .unwrap();
        assert_eq!(
            call(&server, "connected_users", &[]).await,
            Response::Ok(Output::List(vec![
                "alice@example.org/laptop".into(),
                "bob@example.org/phone".into()
            ]))
        );
        assert_eq!(
            call(&server, "connected-users-number", &[]).await,
            Response::Ok(Output::Number(2))
        );
        assert_eq!(
            call(
                &server,
                "kick_session",
                &["bob", "example.org", "phone", "Spamming"]
            )
            .await,
            Response::Ok(Output::Nothing)
        );
        let closed = phone.close.borrow().clone().unwrap();
        assert_eq!(closed.condition, StreamErrorCondition::PolicyViolation);
        assert_eq!(closed.text.as_deref(), Some("Spamming"));
        assert!(laptop.close.borrow().is_none(), "other sessions stay open");
        assert_eq!(
            call(
                &server,
                "kick_session",
                &["bob", "example.org", "tablet", "x"]
            )
            .await,
            err(
                ErrorKind::NotFound,
                "Session bob@example.org/tablet not found on this node"
            )
        );
    }

    #[tokio::test]
    async fn status_and_stop() {
        let (server, _dir) = test_server().await;
        let Response::Ok(Output::Text(text)) = call(&server, "status", &[]).await else {
            panic!("status failed")
        };
        assert!(text.starts_with("The node starling@"), "{text}");
        assert!(text.contains("is started. Status: started"), "{text}");
        assert!(text.contains("sessions: 0"), "{text}");

        let (_id, session) = server
            .sm()
            .bind(FullJid::parse("bob@example.org/phone").unwrap(), None)
            .unwrap();
        assert_eq!(
            call(&server, "stop", &[]).await,
            Response::Ok(Output::Nothing)
        );
        assert_eq!(server.state(), NodeState::Stopping);
        let closed = session.close.borrow().clone().unwrap();
        assert_eq!(closed.condition, StreamErrorCondition::SystemShutdown);
        let Response::Err { kind, message } = call(&server, "status", &[]).await else {
            panic!("status must fail while stopping")
        };
        assert_eq!(kind, ErrorKind::Failed);
        assert!(message.contains("Status: stopping"), "{message}");
    }

    #[tokio::test]
    async fn every_spec_is_implemented() {
        let (server, _dir) = test_server().await;
        for spec in COMMANDS.iter().filter(|c| c.name != "stop") {
            // Arguments that exist nowhere: every command must answer something other than
            // "not implemented".
            let args: Vec<&str> = spec
                .args
                .iter()
                .filter(|a| !a.optional)
                .map(|_| "nobody")
                .collect();
            let resp = call(&server, spec.name, &args).await;
            if let Response::Err { kind, message } = &resp {
                assert_ne!(*kind, ErrorKind::Internal, "{}: {message}", spec.name);
                assert_ne!(*kind, ErrorKind::Usage, "{}: {message}", spec.name);
            }
        }
    }

    #[test]
    fn uptime_format() {
        assert_eq!(format_uptime(Duration::from_secs(5)), "5s");
        assert_eq!(format_uptime(Duration::from_secs(65)), "1m 5s");
        assert_eq!(format_uptime(Duration::from_secs(3600)), "1h 0m 0s");
        assert_eq!(format_uptime(Duration::from_secs(90_061)), "1d 1h 1m 1s");
    }

    #[tokio::test]
    async fn backup_and_restore_round_trip() {
        let (server, dir) = test_server().await;
        assert!(matches!(
            call(&server, "register", &["alice", "example.org", "pw"]).await,
            Response::Ok(_)
        ));
        let file = dir.path().join("backup.db");
        let file = file.to_str().unwrap();
        assert!(matches!(
            call(&server, "backup", &[file]).await,
            Response::Ok(_)
        ));
        // A second backup to the same file is refused, not overwritten.
        assert!(matches!(
            call(&server, "backup", &[file]).await,
            Response::Err {
                kind: ErrorKind::Failed,
                ..
            }
        ));
        call(&server, "unregister", &["alice", "example.org"]).await;
        assert!(matches!(
            call(&server, "check_account", &["alice", "example.org"]).await,
            Response::Err { .. }
        ));
        let Response::Ok(Output::Text(text)) = call(&server, "restore", &[file]).await else {
            panic!("restore failed");
        };
        assert!(text.starts_with("Restored"), "{text}");
        assert!(matches!(
            call(&server, "check_account", &["alice", "example.org"]).await,
            Response::Ok(_)
        ));
        assert!(matches!(
            call(&server, "restore", &["/nonexistent/backup.db"]).await,
            Response::Err {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }
}
