//! `mod_adhoc` (XEP-0050 ad-hoc commands) and `mod_configure` (XEP-0133 service
//! administration): an administrator's XMPP client runs the node's admin commands.
//!
//! Every command comes from the shared registry (`starling_commands::spec`), the same one
//! `starlingctl` and the HTTP API use, so the three can never disagree:
//! - `mod_adhoc` publishes each registry command as node `api-commands/NAME` (the node names
//!   of ejabberd's `mod_adhoc_api`), with one form field per argument;
//! - `mod_configure` adds the XEP-0133 nodes clients show in their admin menus (add/delete
//!   user, change password, online users, registered users count, announcement), each a form
//!   in the XEP's field names, executed through the registry command that does the job
//!   (`register`, `unregister`, `change_password`, `connected_users`, `registered_users`);
//!   the announcement, which has no registry command, is a headline message to every online
//!   session of the host.
//!
//! Who may see and run the commands is the `access` option of `mod_adhoc` (default: members
//! of the `admin` ACL); others see an empty command list and get `<forbidden/>`.
//!
//! Sessions (XEP-0050 §3.4): a command with a form answers `status='executing'` with a
//! `sessionid`; the submission must carry that id, from the same full JID, within
//! [`SESSION_LIFETIME`]; a bounded table keeps the pending ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_commands::spec::{self, CommandSpec, Output, Request, Response};
use starling_config::{
    AccessDecision, AccessRequest, ModuleOptions, ModuleSpec, OptionKind, OptionSpec,
};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    DiscoNodes, HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{Jid, nodeprep};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Stanza, element, set_attr, text_element};

use crate::dataform::{field, form, submitted_values};
use crate::iq;

/// XEP-0050 namespace (also the disco node listing the commands).
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
/// XEP-0133 node prefix and `FORM_TYPE`.
pub const NS_ADMIN: &str = "http://jabber.org/protocol/admin";
/// Node prefix of the registry commands.
pub const API_NODE_PREFIX: &str = "api-commands/";
/// How long a command session waits for its form.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(600);
/// Pending command sessions kept per host; the oldest are dropped beyond it.
const MAX_SESSIONS: usize = 256;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Who may list and run the commands (default: members of the admin ACL).",
    },
    OptionSpec {
        name: "report_commands_node",
        kind: OptionKind::Bool,
        doc: "Accepted for ejabberd compatibility; the command list is always a disco node.",
    },
];

/// `mod_adhoc`.
pub struct Adhoc;

impl Module for Adhoc {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_adhoc",
            aliases: &["adhoc"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let commands = Arc::new(Commands {
            host: host.host.to_owned(),
            access: options.string("access").map(str::to_owned),
            sessions: Mutex::new(HashMap::new()),
        });
        Ok(Registrations::default()
            .iq(NS_COMMANDS, IqTarget::Host, commands.clone())
            .disco_nodes(commands))
    }
}

/// `mod_configure`: turns on the XEP-0133 nodes of `mod_adhoc`.
pub struct Configure;

impl Module for Configure {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_configure",
            aliases: &[],
            options: &[],
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        Ok(Registrations::default())
    }
}

/// The XEP-0133 commands we serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admin {
    AddUser,
    DeleteUser,
    ChangeUserPassword,
    GetOnlineUsersNum,
    GetOnlineUsersList,
    GetRegisteredUsersNum,
    Announce,
}

impl Admin {
    const ALL: [Self; 7] = [
        Self::AddUser,
        Self::DeleteUser,
        Self::ChangeUserPassword,
        Self::GetOnlineUsersNum,
        Self::GetOnlineUsersList,
        Self::GetRegisteredUsersNum,
        Self::Announce,
    ];

    /// The fragment after `NS_ADMIN#`.
    fn fragment(self) -> &'static str {
        match self {
            Self::AddUser => "add-user",
            Self::DeleteUser => "delete-user",
            Self::ChangeUserPassword => "change-user-password",
            Self::GetOnlineUsersNum => "get-online-users-num",
            Self::GetOnlineUsersList => "get-online-users-list",
            Self::GetRegisteredUsersNum => "get-registered-users-num",
            Self::Announce => "announce",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::AddUser => "Add User",
            Self::DeleteUser => "Delete User",
            Self::ChangeUserPassword => "Change User Password",
            Self::GetOnlineUsersNum => "Get Number of Online Users",
            Self::GetOnlineUsersList => "Get List of Online Users",
            Self::GetRegisteredUsersNum => "Get Number of Registered Users",
            Self::Announce => "Send Announcement to Online Users",
        }
    }

    fn from_fragment(fragment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.fragment() == fragment)
    }

    /// The input form; `None` for commands that run at once.
    fn input_form(self) -> Option<Element> {
        let mut x = form("form", Some(self.title()), Some(NS_ADMIN));
        let fields: &[(&str, &str, &str)] = match self {
            Self::AddUser => &[
                (
                    "accountjid",
                    "jid-single",
                    "The Jabber ID for the account to be added",
                ),
                ("password", "text-private", "The password for this account"),
                ("password-verify", "text-private", "Retype password"),
            ],
            Self::DeleteUser => &[("accountjids", "jid-multi", "The Jabber ID(s) to delete")],
            Self::ChangeUserPassword => &[
                ("accountjid", "jid-single", "The Jabber ID for this account"),
                ("password", "text-private", "The password for this account"),
            ],
            Self::Announce => &[
                ("subject", "text-single", "Subject"),
                ("announcement", "text-multi", "Announcement"),
            ],
            Self::GetOnlineUsersNum | Self::GetOnlineUsersList | Self::GetRegisteredUsersNum => {
                return None;
            }
        };
        for (var, kind, label) in fields {
            let mut f = field(var, kind, Some(label), &[]);
            f.append_child(element("required", ns::DATA_FORMS, &[]));
            x.append_child(f);
        }
        Some(x)
    }
}

/// A command node: XEP-0133 or a registry command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Admin(Admin),
    Api(&'static CommandSpec),
}

impl Node {
    fn parse(node: &str) -> Option<Self> {
        if let Some(name) = node.strip_prefix(API_NODE_PREFIX) {
            return spec::find(name)
                .filter(|s| s.name == name && exposed(s))
                .map(Self::Api);
        }
        let fragment = node.strip_prefix(NS_ADMIN)?.strip_prefix('#')?;
        Admin::from_fragment(fragment).map(Self::Admin)
    }

    fn name(self) -> String {
        match self {
            Self::Admin(a) => format!("{NS_ADMIN}#{}", a.fragment()),
            Self::Api(s) => format!("{API_NODE_PREFIX}{}", s.name),
        }
    }

    fn title(self) -> String {
        match self {
            Self::Admin(a) => a.title().to_owned(),
            Self::Api(s) => s.summary().trim_end_matches('.').to_owned(),
        }
    }

    fn input_form(self) -> Option<Element> {
        match self {
            Self::Admin(a) => a.input_form(),
            Self::Api(s) if s.args.is_empty() => None,
            Self::Api(s) => {
                let mut x = form("form", Some(s.name), None);
                x.append_child(text_element("instructions", ns::DATA_FORMS, s.doc));
                for arg in s.args {
                    let mut f = field(arg.name, "text-single", Some(arg.doc), &[]);
                    if !arg.optional {
                        f.append_child(element("required", ns::DATA_FORMS, &[]));
                    }
                    x.append_child(f);
                }
                Some(x)
            }
        }
    }
}

/// Registry commands that make sense from a chat client: not the ones that would end the
/// very node the administrator is talking to mid-command or that only print help.
fn exposed(spec: &CommandSpec) -> bool {
    !matches!(spec.name, "help" | "list")
}

/// One pending command session.
struct Pending {
    node: String,
    requester: Jid,
    started: Instant,
}

/// The handler of one host.
struct Commands {
    host: String,
    access: Option<String>,
    sessions: Mutex<HashMap<String, Pending>>,
}

impl Commands {
    /// Whether `from` may list and run the commands.
    fn allowed(&self, server: &Server, from: &Jid) -> bool {
        let config = server.config();
        let req = AccessRequest {
            user: from.node().map(|node| (node, from.domain())),
            resource: from.resource(),
            ip: None,
        };
        match &self.access {
            Some(rule) => config.access(rule, &req) == AccessDecision::Allow,
            None => config.acl.matches("admin", &req),
        }
    }

    /// The nodes visible on this host.
    fn nodes(&self, server: &Server) -> Vec<Node> {
        let mut nodes = Vec::new();
        if server
            .host_modules(&self.host)
            .is_some_and(|m| m.has("mod_configure"))
        {
            nodes.extend(Admin::ALL.into_iter().map(Node::Admin));
        }
        nodes.extend(spec::COMMANDS.iter().filter(|s| exposed(s)).map(Node::Api));
        nodes
    }

    fn find(&self, server: &Server, node: &str) -> Option<Node> {
        Node::parse(node).filter(|n| self.nodes(server).contains(n))
    }

    /// Opens a session for `node`, dropping expired ones (and the oldest beyond the bound).
    fn open_session(&self, node: &str, requester: &Jid) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, p| p.started.elapsed() < SESSION_LIFETIME);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            id.clone(),
            Pending {
                node: node.to_owned(),
                requester: requester.clone(),
                started: Instant::now(),
            },
        );
        id
    }

    /// Takes the session `id` if it belongs to `requester` and `node` and is still alive.
    fn take_session(&self, id: &str, node: &str, requester: &Jid) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.remove(id) {
            Some(p) if p.node == node && &p.requester == requester => {
                p.started.elapsed() < SESSION_LIFETIME
            }
            Some(p) => {
                // Not theirs: put it back untouched.
                sessions.insert(id.to_owned(), p);
                false
            }
            None => false,
        }
    }

    async fn execute(&self, server: &Server, iq: &Stanza, command: &Element) -> IqResult {
        let node_name = command.attr("node").unwrap_or_default();
        let Some(node) = self.find(server, node_name) else {
            return Err(iq::error(StanzaErrorCondition::ItemNotFound));
        };
        if !self.allowed(server, iq.from()) {
            tracing::info!(from = %iq.from(), node = node_name, "ad-hoc command refused by access rule");
            return Err(iq::error(StanzaErrorCondition::Forbidden));
        }
        let action = command.attr("action").unwrap_or("execute");
        let session = command.attr("sessionid");
        match (action, session) {
            ("cancel", Some(id)) => {
                self.take_session(id, node_name, iq.from());
                Ok(Some(reply(node_name, id, "canceled")))
            }
            ("execute" | "complete", None) => match node.input_form() {
                Some(form) => {
                    let id = self.open_session(node_name, iq.from());
                    let mut out = reply(node_name, &id, "executing");
                    let mut actions = element("actions", NS_COMMANDS, &[("execute", "complete")]);
                    actions.append_child(element("complete", NS_COMMANDS, &[]));
                    out.append_child(actions);
                    out.append_child(form);
                    Ok(Some(out))
                }
                None => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    let result = self.run(server, iq, node, &HashMap::new()).await;
                    Ok(Some(completed(node_name, &id, result)))
                }
            },
            ("execute" | "complete", Some(id)) => {
                if !self.take_session(id, node_name, iq.from()) {
                    return Err(bad_sessionid());
                }
                let Some(x) = command
                    .get_child("x", ns::DATA_FORMS)
                    .filter(|x| x.attr("type") == Some("submit"))
                else {
                    return Err(bad_payload("submit the command's form"));
                };
                let values = submitted_values(x);
                let result = self.run(server, iq, node, &values).await;
                Ok(Some(completed(node_name, id, result)))
            }
            ("cancel", None) => Err(bad_sessionid()),
            _ => Err(malformed_action()),
        }
    }

    /// Runs `node` with the submitted `values`: a result form, or an error note's text.
    async fn run(
        &self,
        server: &Server,
        iq: &Stanza,
        node: Node,
        values: &HashMap<String, Vec<String>>,
    ) -> Result<Option<Element>, String> {
        let one = |var: &str| -> String {
            values
                .get(var)
                .and_then(|v| v.first())
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        match node {
            Node::Api(spec) => {
                let args: Vec<String> = spec
                    .args
                    .iter()
                    .map(|a| one(a.name))
                    .take_while(|v| !v.is_empty())
                    .collect();
                let output = registry(server, spec.name, args).await?;
                Ok(Some(output_form(spec.name, &output)))
            }
            Node::Admin(Admin::AddUser) => {
                let (user, host) = self.account(&one("accountjid"))?;
                if one("password") != one("password-verify") {
                    return Err("The passwords do not match".to_owned());
                }
                registry(server, "register", vec![user, host, one("password")]).await?;
                Ok(None)
            }
            Node::Admin(Admin::DeleteUser) => {
                let jids = values.get("accountjids").cloned().unwrap_or_default();
                if jids.is_empty() {
                    return Err("Give at least one account".to_owned());
                }
                for jid in jids {
                    let (user, host) = self.account(jid.trim())?;
                    registry(server, "unregister", vec![user, host]).await?;
                }
                Ok(None)
            }
            Node::Admin(Admin::ChangeUserPassword) => {
                let (user, host) = self.account(&one("accountjid"))?;
                registry(server, "change_password", vec![user, host, one("password")]).await?;
                Ok(None)
            }
            Node::Admin(Admin::GetOnlineUsersNum | Admin::GetOnlineUsersList) => {
                let Output::List(all) = registry(server, "connected_users", vec![]).await? else {
                    return Err("unexpected output of connected_users".to_owned());
                };
                let suffix = format!("@{}/", self.host);
                let mine: Vec<&str> = all
                    .iter()
                    .map(String::as_str)
                    .filter(|j| j.contains(&suffix))
                    .collect();
                let mut x = form("result", None, Some(NS_ADMIN));
                if node == Node::Admin(Admin::GetOnlineUsersNum) {
                    let n = mine.len().to_string();
                    x.append_child(field("onlineusersnum", "text-single", None, &[&n]));
                } else {
                    x.append_child(field("onlineuserjids", "jid-multi", None, &mine));
                }
                Ok(Some(x))
            }
            Node::Admin(Admin::GetRegisteredUsersNum) => {
                let output = registry(server, "registered_users", vec![self.host.clone()]).await?;
                let n = match output {
                    Output::List(users) => users.len(),
                    _ => 0,
                }
                .to_string();
                let mut x = form("result", None, Some(NS_ADMIN));
                x.append_child(field("registeredusersnum", "text-single", None, &[&n]));
                Ok(Some(x))
            }
            Node::Admin(Admin::Announce) => {
                let body = values
                    .get("announcement")
                    .map(|lines| lines.join("\n"))
                    .unwrap_or_default();
                if body.trim().is_empty() {
                    return Err("The announcement is empty".to_owned());
                }
                let sent = self.announce(server, &one("subject"), &body).await;
                tracing::info!(from = %iq.from(), host = %self.host, sessions = sent, "announcement sent");
                Ok(None)
            }
        }
    }

    /// `user@host` of this host, split for the registry.
    fn account(&self, jid: &str) -> Result<(String, String), String> {
        let parsed: Jid = jid
            .parse()
            .map_err(|_| format!("{jid:?} is not a valid JID"))?;
        let Some(node) = parsed.node() else {
            return Err(format!("{jid} is not an account JID"));
        };
        if parsed.domain() != self.host {
            return Err(format!("{jid} is not an account of {}", self.host));
        }
        let user = nodeprep(node).map_err(|_| format!("{jid} is not a valid account"))?;
        Ok((user, self.host.clone()))
    }

    /// Sends a headline to every session of the host (local and on other cluster nodes).
    async fn announce(&self, server: &Server, subject: &str, body: &str) -> usize {
        let Ok(from) = self.host.parse::<Jid>() else {
            return 0;
        };
        let sessions = server.sm().all();
        let mut sent = 0;
        for to in sessions.into_iter().filter(|j| j.domain() == self.host) {
            let mut message = element("message", ns::CLIENT, &[("type", "headline")]);
            if !subject.is_empty() {
                message.append_child(text_element("subject", ns::CLIENT, subject));
            }
            message.append_child(text_element("body", ns::CLIENT, body));
            if let Ok(stanza) = Stanza::new(message, from.clone(), Jid::from(to)) {
                server.route(stanza).await;
                sent += 1;
            }
        }
        sent
    }
}

impl IqHandler for Commands {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, payload) = iq::request(iq)?;
            if kind != IqType::Set || payload.name() != "command" {
                return Err(iq::error(StanzaErrorCondition::BadRequest)
                    .with_text("ad-hoc commands are run with an iq set of <command/>"));
            }
            self.execute(server, iq, payload).await
        })
    }
}

impl DiscoNodes for Commands {
    fn info(&self, server: &Server, from: &Jid, node: &str) -> Option<Element> {
        if node == NS_COMMANDS {
            let mut q = element("query", ns::DISCO_INFO, &[("node", node)]);
            q.append_child(element(
                "identity",
                ns::DISCO_INFO,
                &[("category", "automation"), ("type", "command-list")],
            ));
            return Some(q);
        }
        let found = self.find(server, node)?;
        if !self.allowed(server, from) {
            return None;
        }
        let mut q = element("query", ns::DISCO_INFO, &[("node", node)]);
        q.append_child(element(
            "identity",
            ns::DISCO_INFO,
            &[
                ("category", "automation"),
                ("type", "command-node"),
                ("name", &found.title()),
            ],
        ));
        for feature in [NS_COMMANDS, ns::DATA_FORMS] {
            q.append_child(element("feature", ns::DISCO_INFO, &[("var", feature)]));
        }
        Some(q)
    }

    fn items(&self, server: &Server, from: &Jid, node: &str) -> Option<Element> {
        if node != NS_COMMANDS {
            return None;
        }
        let mut q = element("query", ns::DISCO_ITEMS, &[("node", node)]);
        if self.allowed(server, from) {
            for n in self.nodes(server) {
                q.append_child(element(
                    "item",
                    ns::DISCO_ITEMS,
                    &[
                        ("jid", &self.host),
                        ("node", &n.name()),
                        ("name", &n.title()),
                    ],
                ));
            }
        }
        Some(q)
    }
}

/// Runs a registry command, as `starlingctl` would.
async fn registry(server: &Server, command: &str, args: Vec<String>) -> Result<Output, String> {
    let Some(server) = server.handle() else {
        return Err("the server is shutting down".to_owned());
    };
    let request = Request {
        command: command.to_owned(),
        args,
    };
    match starling_commands::exec::execute(&server, &request).await {
        Response::Ok(output) => Ok(output),
        Response::Err { message, .. } => Err(message),
    }
}

/// A registry command's output as a result form.
fn output_form(command: &str, output: &Output) -> Element {
    let mut x = form("result", Some(command), None);
    match output {
        Output::Nothing => {}
        Output::Text(text) => {
            let lines: Vec<&str> = text.lines().collect();
            x.append_child(field("result", "text-multi", None, &lines));
        }
        Output::List(items) => {
            let items: Vec<&str> = items.iter().map(String::as_str).collect();
            x.append_child(field("result", "text-multi", None, &items));
        }
        Output::Number(n) => {
            x.append_child(field("result", "text-single", None, &[&n.to_string()]));
        }
    }
    x
}

/// `<command/>` with its node, session and status.
fn reply(node: &str, session: &str, status: &str) -> Element {
    element(
        "command",
        NS_COMMANDS,
        &[("node", node), ("sessionid", session), ("status", status)],
    )
}

/// The completed `<command/>`: the result form, or an error note (XEP-0050 §3.4.6).
fn completed(node: &str, session: &str, result: Result<Option<Element>, String>) -> Element {
    let mut out = reply(node, session, "completed");
    match result {
        Ok(Some(form)) => out.append_child(form),
        Ok(None) => out.append_child(note("info", "Done")),
        Err(message) => out.append_child(note("error", &message)),
    };
    out
}

fn note(kind: &str, text: &str) -> Element {
    let mut n = text_element("note", NS_COMMANDS, text);
    set_attr(&mut n, "type", kind);
    n
}

/// XEP-0050 §4.6 errors: a general condition plus the command-specific one.
fn command_error(condition: StanzaErrorCondition, specific: &'static str) -> StanzaError {
    iq::error(condition).with_application(specific, NS_COMMANDS)
}

fn bad_sessionid() -> StanzaError {
    command_error(StanzaErrorCondition::BadRequest, "bad-sessionid")
}

fn malformed_action() -> StanzaError {
    command_error(StanzaErrorCondition::BadRequest, "malformed-action")
}

fn bad_payload(text: &str) -> StanzaError {
    command_error(StanzaErrorCondition::BadRequest, "bad-payload").with_text(text)
}
