//! The command registry and the control-socket wire format.
//!
//! Commands are defined once, here (STYLE.md item 10, after ejabberd's `ejabberd_commands`):
//! each [`CommandSpec`] names the command, its arguments, its result and its documentation.
//! `starlingctl` validates command lines against it without a running node, the server's
//! `exec` module validates requests against it again, and the HTTP API, XEP-0133 ad-hoc
//! commands and the generated docs read the same table.
//!
//! The names, arguments and output formats follow `ejabberdctl` (DESIGN.md §10). Names are
//! matched with `-` and `_` treated alike, as ejabberdctl does (`connected-users`).
//!
//! The control socket speaks JSON lines: one [`Request`] per line in, one [`Response`] per
//! line out. This module has no heavy dependencies so that `starlingctl` stays small.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an argument holds; arguments always travel as strings and are checked against this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Any text (user names, hosts, passwords, reasons).
    String,
    /// A decimal integer, possibly negative.
    Integer,
}

/// One argument of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    /// Lower-case name, shown upper-case in usage lines (`user` → `USER`).
    pub name: &'static str,
    /// Expected type.
    pub kind: ArgKind,
    /// One-line description.
    pub doc: &'static str,
    /// Whether the argument may be left out; optional arguments only come last.
    pub optional: bool,
}

impl ArgSpec {
    /// A mandatory argument.
    pub const fn required(name: &'static str, kind: ArgKind, doc: &'static str) -> Self {
        Self {
            name,
            kind,
            doc,
            optional: false,
        }
    }

    /// An argument that may be left out (only at the end of the list).
    pub const fn optional(name: &'static str, kind: ArgKind, doc: &'static str) -> Self {
        Self {
            name,
            kind,
            doc,
            optional: true,
        }
    }
}

/// The shape of a command's successful result, for clients that render it (API, docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultKind {
    /// Nothing: success is the exit code (ejabberd's `rescode`).
    Nothing,
    /// A human-readable message, possibly several lines.
    Text,
    /// A list of items, one per line.
    List,
    /// A non-negative integer.
    Number,
}

/// A command: everything needed to validate a call and document it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// Canonical name with underscores, as in ejabberdctl.
    pub name: &'static str,
    /// Arguments in order.
    pub args: &'static [ArgSpec],
    /// Shape of the result.
    pub result: ResultKind,
    /// One-paragraph description; its first sentence is the summary line.
    pub doc: &'static str,
    /// An example command line, without the program name.
    pub example: &'static str,
}

const USER: ArgSpec = ArgSpec::required("user", ArgKind::String, "User name (localpart)");
const HOST: ArgSpec = ArgSpec::required("host", ArgKind::String, "Virtual host served");
const ROOM_NAME: ArgSpec = ArgSpec::required("name", ArgKind::String, "Room name (localpart)");
const MUC_SERVICE: ArgSpec = ArgSpec::required(
    "service",
    ArgKind::String,
    "MUC service, e.g. conference.example.org",
);

/// Every command the node understands, in the order `help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "status",
        args: &[],
        result: ResultKind::Text,
        doc: "Get the node's status. Fails (exit 1) while the node is stopping.",
        example: "status",
    },
    CommandSpec {
        name: "stop",
        args: &[],
        result: ResultKind::Nothing,
        doc: "Stop the node. Sessions are closed with <system-shutdown/> and the server exits.",
        example: "stop",
    },
    CommandSpec {
        name: "register",
        args: &[
            USER,
            HOST,
            ArgSpec::required("password", ArgKind::String, "Password"),
        ],
        result: ResultKind::Text,
        doc: "Register an account. Fails if it already exists or the host is not served.",
        example: "register alice example.org s3cret",
    },
    CommandSpec {
        name: "unregister",
        args: &[USER, HOST],
        result: ResultKind::Nothing,
        doc: "Remove an account with its roster and data, and close its sessions \
              with <not-authorized/>. Fails if there is no such account.",
        example: "unregister alice example.org",
    },
    CommandSpec {
        name: "change_password",
        args: &[
            USER,
            HOST,
            ArgSpec::required("newpass", ArgKind::String, "New password"),
        ],
        result: ResultKind::Nothing,
        doc: "Change an account's password. Open sessions stay connected.",
        example: "change_password alice example.org n3w",
    },
    CommandSpec {
        name: "check_account",
        args: &[USER, HOST],
        result: ResultKind::Nothing,
        doc: "Check that an account exists: exit 0 if it does, 1 if not.",
        example: "check_account alice example.org",
    },
    CommandSpec {
        name: "backup",
        args: &[ArgSpec::required(
            "file",
            ArgKind::String,
            "New file to write (absolute, or relative to starlingctl's directory)",
        )],
        result: ResultKind::Nothing,
        doc: "Write a consistent copy of the embedded database to a new file while the node \
              serves. PostgreSQL deployments use pg_dump instead (the command says so).",
        example: "backup /var/backups/starling-2026-11-23.db",
    },
    CommandSpec {
        name: "restore",
        args: &[ArgSpec::required(
            "file",
            ArgKind::String,
            "Backup file written by `backup` (same Starling version)",
        )],
        result: ResultKind::Text,
        doc: "Replace the whole content of the embedded database by a backup, in one \
              transaction. The backup must come from the same schema version.",
        example: "restore /var/backups/starling-2026-11-23.db",
    },
    CommandSpec {
        name: "import_piefxis",
        args: &[ArgSpec::required(
            "file",
            ArgKind::String,
            "XEP-0227 file (its xi:includes are read from the same directory)",
        )],
        result: ResultKind::Text,
        doc: "Import accounts (passwords or SCRAM keys), rosters, vCards, private XML and \
              offline messages from a XEP-0227 file, as written by ejabberd's export_piefxis \
              or Prosody's migrator. Existing accounts are skipped, never overwritten.",
        example: "import_piefxis /tmp/ejabberd-export/20261123-120000.xml",
    },
    CommandSpec {
        name: "export_piefxis",
        args: &[ArgSpec::required(
            "dir",
            ArgKind::String,
            "Directory to write starling-export.xml into",
        )],
        result: ResultKind::Text,
        doc: "Export every account of every host (SCRAM keys, rosters, vCards, offline \
              messages) to DIR/starling-export.xml in XEP-0227 format.",
        example: "export_piefxis /tmp/starling-export",
    },
    CommandSpec {
        name: "registered_users",
        args: &[HOST],
        result: ResultKind::List,
        doc: "List the accounts of a host, one user name per line, sorted.",
        example: "registered_users example.org",
    },
    CommandSpec {
        name: "connected_users",
        args: &[],
        result: ResultKind::List,
        doc: "List the sessions bound on this node, one full JID per line, sorted.",
        example: "connected_users",
    },
    CommandSpec {
        name: "connected_users_number",
        args: &[],
        result: ResultKind::Number,
        doc: "Count the sessions bound on this node.",
        example: "connected_users_number",
    },
    CommandSpec {
        name: "incoming_s2s_number",
        args: &[],
        result: ResultKind::Number,
        doc: "Count the server-to-server streams other servers opened to this node.",
        example: "incoming_s2s_number",
    },
    CommandSpec {
        name: "outgoing_s2s_number",
        args: &[],
        result: ResultKind::Number,
        doc: "Count the server-to-server connections this node opened (negotiating or up).",
        example: "outgoing_s2s_number",
    },
    CommandSpec {
        name: "s2s_connections",
        args: &[],
        result: ResultKind::List,
        doc: "List the server-to-server connections, one per line: direction (in/out), \
              local domain, remote domain, peer address, tls or plain, and the \
              authentication method (external, dialback, none while negotiating).",
        example: "s2s_connections",
    },
    CommandSpec {
        name: "stop_s2s_connections",
        args: &[],
        result: ResultKind::Nothing,
        doc: "Close every server-to-server connection; new ones open on demand.",
        example: "stop_s2s_connections",
    },
    CommandSpec {
        name: "kick_session",
        args: &[
            USER,
            HOST,
            ArgSpec::required("resource", ArgKind::String, "Resource of the session"),
            ArgSpec::required("reason", ArgKind::String, "Text sent with the stream error"),
        ],
        result: ResultKind::Nothing,
        doc: "Close one session with the stream error <policy-violation/> carrying REASON \
              as its text. Fails if no such session is bound here.",
        example: "kick_session alice example.org phone \"Spamming\"",
    },
    CommandSpec {
        name: "list_bans",
        args: &[],
        result: ResultKind::List,
        doc: "List the addresses banned by mod_fail2ban on this node: address (IPv6: its \
              /64), failed authentications, seconds until the ban lifts.",
        example: "list_bans",
    },
    CommandSpec {
        name: "unban_ip",
        args: &[ArgSpec::required(
            "address",
            ArgKind::String,
            "IP address or network (CIDR), e.g. 192.0.2.7 or 2001:db8::/48",
        )],
        result: ResultKind::Number,
        doc: "Lift mod_fail2ban bans and forget failed authentications of an address or \
              network on this node; prints how many addresses were unbanned.",
        example: "unban_ip 192.0.2.7",
    },
    CommandSpec {
        name: "create_room",
        args: &[ROOM_NAME, MUC_SERVICE, HOST],
        result: ResultKind::Nothing,
        doc: "Create a MUC room NAME@SERVICE with the service's default room options. Fails \
              if the room exists or SERVICE is not a MUC service of this node.",
        example: "create_room lobby conference.example.org example.org",
    },
    CommandSpec {
        name: "destroy_room",
        args: &[ROOM_NAME, MUC_SERVICE],
        result: ResultKind::Nothing,
        doc: "Destroy a MUC room: occupants are told, stored state is deleted.",
        example: "destroy_room lobby conference.example.org",
    },
    CommandSpec {
        name: "muc_online_rooms",
        args: &[MUC_SERVICE],
        result: ResultKind::List,
        doc: "List the live rooms of a MUC service (or of every service: global), one JID \
              per line.",
        example: "muc_online_rooms conference.example.org",
    },
    CommandSpec {
        name: "get_room_occupants",
        args: &[ROOM_NAME, MUC_SERVICE],
        result: ResultKind::List,
        doc: "List a room's occupants: real JID, nick and role, tab-separated.",
        example: "get_room_occupants lobby conference.example.org",
    },
    CommandSpec {
        name: "get_room_options",
        args: &[ROOM_NAME, MUC_SERVICE],
        result: ResultKind::List,
        doc: "List a room's options (ejabberd's names), option and value tab-separated.",
        example: "get_room_options lobby conference.example.org",
    },
    CommandSpec {
        name: "change_room_option",
        args: &[
            ROOM_NAME,
            MUC_SERVICE,
            ArgSpec::required("option", ArgKind::String, "Option name, e.g. members_only"),
            ArgSpec::required("value", ArgKind::String, "New value, e.g. true"),
        ],
        result: ResultKind::Nothing,
        doc: "Change one option of a room; occupants are told (status 104).",
        example: "change_room_option lobby conference.example.org persistent true",
    },
    CommandSpec {
        name: "set_room_affiliation",
        args: &[
            ROOM_NAME,
            MUC_SERVICE,
            ArgSpec::required("jid", ArgKind::String, "Bare JID of the user"),
            ArgSpec::required(
                "affiliation",
                ArgKind::String,
                "owner, admin, member, outcast or none",
            ),
        ],
        result: ResultKind::Nothing,
        doc: "Set a user's affiliation with a room; an outcast present is banned (301).",
        example: "set_room_affiliation lobby conference.example.org bob@example.org member",
    },
    CommandSpec {
        name: "join_cluster",
        args: &[ArgSpec::required(
            "node",
            ArgKind::String,
            "Cluster address (host:port of its cluster.listen) of any member, \
             optionally as name@host:port",
        )],
        result: ResultKind::List,
        doc: "Join the cluster of the node at that address: the link is authenticated with \
              the cookie, hosts and database are compared, then this node links to every \
              member. Returns the members once all are linked; refusals name both values.",
        example: "join_cluster 10.0.0.1:5370",
    },
    CommandSpec {
        name: "leave_cluster",
        args: &[ArgSpec::required(
            "node",
            ArgKind::String,
            "Node name, e.g. starling@n2",
        )],
        result: ResultKind::Nothing,
        doc: "Remove a node from the cluster for good: every member forgets it and refuses \
              its links, and the node stops if it is running.",
        example: "leave_cluster starling@n2",
    },
    CommandSpec {
        name: "cluster_status",
        args: &[],
        result: ResultKind::List,
        doc: "List the cluster's members, this node first: name, address, up or down, \
              sessions, milliseconds since the last frame and the round trip in microseconds.",
        example: "cluster_status",
    },
    CommandSpec {
        name: "list_cluster",
        args: &[],
        result: ResultKind::List,
        doc: "Same as cluster_status.",
        example: "list_cluster",
    },
    CommandSpec {
        name: "help",
        args: &[ArgSpec::optional(
            "command",
            ArgKind::String,
            "Command to describe",
        )],
        result: ResultKind::Text,
        doc: "Describe a command, or list every command with its summary.",
        example: "help register",
    },
    CommandSpec {
        name: "list",
        args: &[],
        result: ResultKind::List,
        doc: "List every command with its arguments, one per line.",
        example: "list",
    },
];

/// Looks a command up by name, treating `-` and `_` alike.
pub fn find(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| same_name(c.name, name))
}

/// The registered command whose name is closest to `name`, if one is close enough to be a
/// plausible typo (for "did you mean" hints).
pub fn suggest(name: &str) -> Option<&'static CommandSpec> {
    let wanted = canonical(name);
    COMMANDS
        .iter()
        .map(|c| (edit_distance(c.name, &wanted), c))
        // A third of the name (at least 2 edits) catches typos without suggesting nonsense.
        .filter(|(d, c)| *d <= (c.name.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn same_name(canonical_name: &str, given: &str) -> bool {
    canonical_name.len() == given.len()
        && canonical_name
            .bytes()
            .zip(given.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

fn canonical(name: &str) -> String {
    name.replace('-', "_").to_ascii_lowercase()
}

/// Levenshtein distance over chars; names are short, so the quadratic cost is irrelevant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(prev.len());
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute =
                prev.get(j).copied().unwrap_or(usize::MAX / 2) + usize::from(ca != *cb);
            let delete = prev.get(j + 1).copied().unwrap_or(usize::MAX / 2) + 1;
            let insert = cur.last().copied().unwrap_or(usize::MAX / 2) + 1;
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

impl CommandSpec {
    /// The usage line without the program name: `register USER HOST PASSWORD`,
    /// optional arguments in brackets.
    pub fn usage(&self) -> String {
        let mut line = self.name.to_owned();
        for arg in self.args {
            line.push(' ');
            let upper = arg.name.to_ascii_uppercase();
            if arg.optional {
                line.push('[');
                line.push_str(&upper);
                line.push(']');
            } else {
                line.push_str(&upper);
            }
        }
        line
    }

    /// The first sentence of the doc, for one-line listings.
    pub fn summary(&self) -> &'static str {
        match self.doc.find(". ") {
            Some(end) => self.doc.get(..=end).unwrap_or(self.doc),
            None => self.doc,
        }
    }

    /// The full description shown by `help COMMAND`.
    pub fn describe(&self) -> String {
        let mut text = format!("Command: {}\n\n  {}\n", self.usage(), self.doc);
        if !self.args.is_empty() {
            text.push_str("\nArguments:\n");
            for arg in self.args {
                let kind = match arg.kind {
                    ArgKind::String => "string",
                    ArgKind::Integer => "integer",
                };
                let optional = if arg.optional { ", optional" } else { "" };
                text.push_str(&format!(
                    "  {} ({kind}{optional}): {}\n",
                    arg.name.to_ascii_uppercase(),
                    arg.doc
                ));
            }
        }
        text.push_str(&format!("\nExample:\n  {}", self.example));
        text
    }

    /// Checks the number and types of `args`; the error names the argument and shows the
    /// usage line.
    pub fn validate(&self, args: &[String]) -> Result<(), UsageError> {
        let required = self.args.iter().filter(|a| !a.optional).count();
        if args.len() < required || args.len() > self.args.len() {
            return Err(UsageError {
                command: self.name,
                problem: UsageProblem::Count {
                    expected_min: required,
                    expected_max: self.args.len(),
                    got: args.len(),
                    missing: self
                        .args
                        .get(args.len())
                        .filter(|_| args.len() < required)
                        .map(|a| a.name),
                },
                usage: self.usage(),
            });
        }
        for (spec, value) in self.args.iter().zip(args) {
            if spec.kind == ArgKind::Integer && value.trim().parse::<i64>().is_err() {
                return Err(UsageError {
                    command: self.name,
                    problem: UsageProblem::NotInteger {
                        arg: spec.name,
                        value: value.clone(),
                    },
                    usage: self.usage(),
                });
            }
        }
        Ok(())
    }
}

/// A command line that does not match its command's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    /// The command's canonical name.
    pub command: &'static str,
    /// What is wrong.
    pub problem: UsageProblem,
    /// The usage line without the program name.
    pub usage: String,
}

/// What is wrong with a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageProblem {
    /// Too few or too many arguments.
    Count {
        /// Required arguments.
        expected_min: usize,
        /// Required plus optional arguments.
        expected_max: usize,
        /// Arguments given.
        got: usize,
        /// The first missing argument, when there are too few.
        missing: Option<&'static str>,
    },
    /// An integer argument is not a number.
    NotInteger {
        /// The argument's name.
        arg: &'static str,
        /// What was given.
        value: String,
    },
}

impl UsageError {
    /// What is wrong, without the usage line (clients print their own, with the program name).
    pub fn problem_text(&self) -> String {
        match &self.problem {
            UsageProblem::Count {
                expected_min,
                expected_max,
                got,
                missing,
            } => {
                let expected = if expected_min == expected_max {
                    expected_min.to_string()
                } else {
                    format!("{expected_min} to {expected_max}")
                };
                let mut text = format!(
                    "{} takes {expected} argument(s) but {got} were given",
                    self.command
                );
                if let Some(name) = missing {
                    text.push_str(&format!(" (missing {})", name.to_ascii_uppercase()));
                }
                text
            }
            UsageProblem::NotInteger { arg, value } => format!(
                "argument {} of {} must be an integer, got {value:?}",
                arg.to_ascii_uppercase(),
                self.command
            ),
        }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\nUsage: {}", self.problem_text(), self.usage)
    }
}

impl std::error::Error for UsageError {}

/// One line of the control protocol, client to node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Command name (`-` or `_`).
    pub command: String,
    /// Arguments as typed.
    #[serde(default)]
    pub args: Vec<String>,
}

/// One line of the control protocol, node to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The command succeeded.
    Ok(Output),
    /// The command failed.
    Err {
        /// Category, which decides the exit code.
        kind: ErrorKind,
        /// Human-readable explanation.
        message: String,
    },
}

impl Response {
    /// A failure of kind `kind`.
    pub fn err(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Err {
            kind,
            message: message.into(),
        }
    }
}

/// A successful result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// No output.
    Nothing,
    /// A message, possibly several lines.
    Text(String),
    /// Items, one per line.
    List(Vec<String>),
    /// A count.
    Number(u64),
}

impl Output {
    /// The text `starlingctl` prints: each line ends with a newline; nothing prints nothing.
    pub fn render(&self) -> String {
        match self {
            Self::Nothing => String::new(),
            Self::Text(t) if t.is_empty() => String::new(),
            Self::Text(t) => format!("{}\n", t.trim_end_matches('\n')),
            Self::List(items) => items.iter().map(|i| format!("{i}\n")).collect(),
            Self::Number(n) => format!("{n}\n"),
        }
    }
}

/// Why a command failed; decides `starlingctl`'s exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// No command by that name (exit 2).
    UnknownCommand,
    /// Wrong number or type of arguments, or a malformed request (exit 2).
    Usage,
    /// The account, host or session named does not exist (exit 1).
    NotFound,
    /// The command ran and failed: conflict, invalid value, node stopping (exit 1).
    Failed,
    /// The caller may not use the control socket (exit 1).
    Denied,
    /// The node could not complete the command: storage down, internal error (exit 1).
    Internal,
}

impl ErrorKind {
    /// The ejabberdctl exit code for this failure: 2 for usage errors, 1 otherwise.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::UnknownCommand | Self::Usage => 2,
            Self::NotFound | Self::Failed | Self::Denied | Self::Internal => 1,
        }
    }
}

/// The text of `help` without an argument: every command with its summary.
pub fn help_text() -> String {
    let width = COMMANDS.iter().map(|c| c.usage().len()).max().unwrap_or(0);
    let mut text = String::from("Available commands:\n");
    for c in COMMANDS {
        text.push_str(&format!("  {:width$}  {}\n", c.usage(), c.summary()));
    }
    text.push_str("\nRun `help COMMAND` for details on one command.");
    text
}

/// The lines of `list`: every command's usage line.
pub fn list_lines() -> Vec<String> {
    COMMANDS.iter().map(CommandSpec::usage).collect()
}

/// The result of `help [COMMAND]`, computed from the registry alone so that it works without
/// a running node.
pub fn help(args: &[String]) -> Response {
    match args.first() {
        None => Response::Ok(Output::Text(help_text())),
        Some(name) => match find(name) {
            Some(spec) => Response::Ok(Output::Text(spec.describe())),
            None => Response::err(ErrorKind::UnknownCommand, unknown_command_message(name)),
        },
    }
}

/// "Unknown command NAME", with a "did you mean" hint when one is close.
pub fn unknown_command_message(name: &str) -> String {
    match suggest(name) {
        Some(spec) => format!("Unknown command {name:?}. Did you mean {:?}?", spec.name),
        None => format!("Unknown command {name:?}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn find_accepts_dashes_and_underscores() {
        assert_eq!(
            find("connected_users").map(|c| c.name),
            Some("connected_users")
        );
        assert_eq!(
            find("connected-users").map(|c| c.name),
            Some("connected_users")
        );
        assert_eq!(
            find("connected-users-number").map(|c| c.name),
            Some("connected_users_number")
        );
        assert_eq!(
            find("change-password").map(|c| c.name),
            Some("change_password")
        );
        assert!(find("connected").is_none());
        assert!(find("").is_none());
        // The registry's own names never contain dashes, so matching one way suffices.
        assert!(COMMANDS.iter().all(|c| !c.name.contains('-')));
    }

    #[test]
    fn names_are_unique_and_optional_args_come_last() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS.iter().skip(i + 1).all(|o| o.name != c.name),
                "duplicate command {}",
                c.name
            );
            let first_optional = c.args.iter().position(|a| a.optional);
            if let Some(p) = first_optional {
                assert!(c.args.iter().skip(p).all(|a| a.optional), "{}", c.name);
            }
            assert!(c.example.starts_with(c.name), "example of {}", c.name);
            assert!(!c.doc.is_empty());
        }
    }

    #[test]
    fn suggest_catches_typos_only() {
        assert_eq!(suggest("registr").map(|c| c.name), Some("register"));
        assert_eq!(
            suggest("conected-users").map(|c| c.name),
            Some("connected_users")
        );
        assert_eq!(suggest("STATUS").map(|c| c.name), Some("status"));
        assert!(suggest("frobnicate_everything").is_none());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn usage_lines() {
        assert_eq!(
            find("register").map(|c| c.usage()).as_deref(),
            Some("register USER HOST PASSWORD")
        );
        assert_eq!(
            find("help").map(|c| c.usage()).as_deref(),
            Some("help [COMMAND]")
        );
        assert_eq!(find("status").map(|c| c.usage()).as_deref(), Some("status"));
    }

    #[test]
    fn validate_counts_arguments_and_names_the_missing_one() {
        let register = find("register").unwrap();
        assert!(register.validate(&strings(&["a", "b", "c"])).is_ok());
        let err = register
            .validate(&strings(&["alice", "example.org"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "register takes 3 argument(s) but 2 were given (missing PASSWORD)\n\
             Usage: register USER HOST PASSWORD"
        );
        let err = register
            .validate(&strings(&["a", "b", "c", "d"]))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("register takes 3 argument(s) but 4 were given\n")
        );

        let help = find("help").unwrap();
        assert!(help.validate(&[]).is_ok());
        assert!(help.validate(&strings(&["status"])).is_ok());
        let err = help.validate(&strings(&["a", "b"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("help takes 0 to 1 argument(s) but 2 were given")
        );
    }

    #[test]
    fn validate_checks_integers() {
        const SPEC: CommandSpec = CommandSpec {
            name: "set_limit",
            args: &[ArgSpec::required("count", ArgKind::Integer, "How many")],
            result: ResultKind::Nothing,
            doc: "Test.",
            example: "set_limit 3",
        };
        assert!(SPEC.validate(&strings(&["-12"])).is_ok());
        let err = SPEC.validate(&strings(&["many"])).unwrap_err();
        assert_eq!(
            err.problem,
            UsageProblem::NotInteger {
                arg: "count",
                value: "many".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "argument COUNT of set_limit must be an integer, got \"many\"\nUsage: set_limit COUNT"
        );
    }

    #[test]
    fn wire_format_is_stable_json() {
        let req = Request {
            command: "register".into(),
            args: strings(&["a", "b", "c"]),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(line, r#"{"command":"register","args":["a","b","c"]}"#);
        let back: Request = serde_json::from_str(r#"{"command":"status"}"#).unwrap();
        assert_eq!(
            back,
            Request {
                command: "status".into(),
                args: vec![]
            }
        );

        let cases = [
            (Response::Ok(Output::Nothing), r#"{"ok":"nothing"}"#),
            (Response::Ok(Output::Number(3)), r#"{"ok":{"number":3}}"#),
            (
                Response::Ok(Output::List(strings(&["a"]))),
                r#"{"ok":{"list":["a"]}}"#,
            ),
            (
                Response::err(ErrorKind::NotFound, "no"),
                r#"{"err":{"kind":"not_found","message":"no"}}"#,
            ),
        ];
        for (resp, json) in cases {
            assert_eq!(serde_json::to_string(&resp).unwrap(), json);
            assert_eq!(serde_json::from_str::<Response>(json).unwrap(), resp);
        }
    }

    #[test]
    fn output_rendering() {
        assert_eq!(Output::Nothing.render(), "");
        assert_eq!(Output::Text("a\nb\n".into()).render(), "a\nb\n");
        assert_eq!(Output::List(strings(&["x", "y"])).render(), "x\ny\n");
        assert_eq!(Output::List(vec![]).render(), "");
        assert_eq!(Output::Number(7).render(), "7\n");
    }

    #[test]
    fn help_lists_and_describes() {
        let Response::Ok(Output::Text(all)) = help(&[]) else {
            panic!("help failed")
        };
        for c in COMMANDS {
            assert!(all.contains(c.name), "{} missing from help", c.name);
        }
        let Response::Ok(Output::Text(one)) = help(&strings(&["kick-session"])) else {
            panic!("help kick-session failed")
        };
        assert!(one.contains("kick_session USER HOST RESOURCE REASON"));
        assert!(one.contains("policy-violation"));
        assert_eq!(
            help(&strings(&["registr"])),
            Response::err(
                ErrorKind::UnknownCommand,
                "Unknown command \"registr\". Did you mean \"register\"?"
            )
        );
        assert_eq!(
            find("status").map(|c| c.summary()),
            Some("Get the node's status.")
        );
        assert_eq!(list_lines().len(), COMMANDS.len());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ErrorKind::Usage.exit_code(), 2);
        assert_eq!(ErrorKind::UnknownCommand.exit_code(), 2);
        assert_eq!(ErrorKind::Failed.exit_code(), 1);
        assert_eq!(ErrorKind::NotFound.exit_code(), 1);
    }
}
