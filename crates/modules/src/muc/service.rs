//! The MUC service (`conference.HOST`): routes stanzas to rooms, one task per live room.
//!
//! Each room is an actor: a Tokio task owning its [`Room`] behind a bounded channel
//! ([`ROOM_QUEUE`]); a full channel answers `<resource-constraint type='wait'/>` instead of
//! growing memory (DESIGN §2.4). The map of live rooms is behind a `std::sync::Mutex` held
//! only for lookups and `try_send` (never across an await): a room task that finds itself
//! empty removes its entry under the same lock after checking its queue is empty, so no
//! stanza can be queued to a task that is about to stop.
//!
//! Rooms come to life on the first stanza: a stored (persistent) room is loaded, an unknown
//! room is created by a join if `access_create` allows, anything else to an unknown room is
//! `<item-not-found/>`. Persistent rooms stay live once loaded; temporary rooms stop when the
//! last occupant leaves. The service itself answers disco#info (identity `conference/text`),
//! disco#items (public rooms, up to `max_rooms_discoitems`), ping, and the admin requests
//! of [`ADMIN_NS`] (see [`MucService::admin`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use starling_config::{AccessDecision, AccessRequest};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::Service;
use starling_xmpp::Element;
use starling_xmpp::error::{ErrorType, StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, Stanza, element, text_element};
use tokio::sync::{mpsc, oneshot};

use super::config::RoomConfig;
use super::room::{Affiliation, Context, Effects, MUC, Room, RoomLimits};

/// Stanzas queued per room before senders get `<resource-constraint/>`.
pub const ROOM_QUEUE: usize = 1024;
/// Namespace of the service's admin requests (commands from `starling-commands`).
pub const ADMIN_NS: &str = "urn:starling:muc:admin:0";

/// The service's policies, from the module options.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// The service domain.
    pub domain: String,
    /// The host it belongs to.
    pub host: String,
    /// `access`: who may use the service.
    pub access: String,
    /// `access_create`: who may create rooms.
    pub access_create: String,
    /// `access_persistent`: who may make rooms persistent.
    pub access_persistent: String,
    /// `access_admin`: service administrators (owners of every room).
    pub access_admin: String,
    /// `default_room_options`.
    pub defaults: RoomConfig,
    /// Limits applied by every room.
    pub limits: RoomLimits,
    /// `max_rooms_discoitems`.
    pub max_rooms_discoitems: usize,
    /// `max_user_conferences`.
    pub max_user_conferences: usize,
}

/// What a room's task receives.
enum RoomMsg {
    Stanza(Stanza, Context),
    Command(RoomCommand, oneshot::Sender<Result<Vec<String>, String>>),
}

/// Admin operations on one room.
#[derive(Debug)]
enum RoomCommand {
    Occupants,
    Options,
    ChangeOption(String, String),
    SetAffiliation(BareJid, Affiliation),
    Destroy,
    /// The room is placed on another cluster node now (or this node stops): its occupants are
    /// told to rejoin (status 332) and the task stops, the room living on from the store.
    ShutDown,
}

/// Why a message did not reach a room's queue (the message is given back).
enum Undelivered {
    /// The queue is full.
    Full(Box<RoomMsg>),
    /// The room has no live task.
    NotLive(Box<RoomMsg>),
}

/// What disco#items and `muc_online_rooms` need without asking the task.
#[derive(Clone, Debug, Default)]
struct Summary {
    title: String,
    public: bool,
    occupants: usize,
}

struct RoomHandle {
    tx: mpsc::Sender<RoomMsg>,
    summary: Arc<Mutex<Summary>>,
}

/// One MUC service.
pub struct MucService {
    /// Itself, for the room tasks it spawns.
    this: std::sync::Weak<Self>,
    opts: ServiceOptions,
    rooms: Mutex<HashMap<String, RoomHandle>>,
    /// Rooms each bare JID is in, for `max_user_conferences`.
    conferences: Mutex<HashMap<String, usize>>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated (single operations),
    // so a poisoned lock is used as is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MucService {
    /// A service with no live rooms.
    pub fn new(opts: ServiceOptions) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            opts,
            rooms: Mutex::new(HashMap::new()),
            conferences: Mutex::new(HashMap::new()),
        })
    }

    /// The service's domain.
    pub fn domain(&self) -> &str {
        &self.opts.domain
    }

    fn allowed(&self, server: &Server, rule: &str, jid: &Jid) -> bool {
        let request = AccessRequest {
            user: jid.node().map(|n| (n, jid.domain())),
            resource: jid.resource(),
            ip: None,
        };
        server.config().access(rule, &request) == AccessDecision::Allow
    }

    fn context(&self, server: &Server, from: &Jid) -> Context {
        let too_many = lock(&self.conferences)
            .get(from.to_bare().as_str())
            .is_some_and(|n| *n >= self.opts.max_user_conferences);
        Context {
            now: now_micros(),
            service_admin: self.allowed(server, &self.opts.access_admin, from),
            may_persist: self.allowed(server, &self.opts.access_persistent, from),
            too_many_rooms: too_many,
        }
    }

    async fn route_stanza(&self, server: &Server, stanza: Stanza) {
        let Some(name) = stanza.to().node().map(str::to_owned) else {
            self.to_service(server, stanza).await;
            return;
        };
        if is_admin_request(server, &stanza) {
            // Admin commands about one room are addressed to it (placed on the room's node).
            self.to_service(server, stanza).await;
            return;
        }
        if !self.allowed(server, &self.opts.access, stanza.from()) {
            reply_error(
                server,
                &stanza,
                StanzaErrorCondition::Forbidden,
                "access denied",
            )
            .await;
            return;
        }
        let ctx = self.context(server, stanza.from());
        let msg = RoomMsg::Stanza(stanza, ctx);
        let msg = match self.try_deliver(&name, msg) {
            Ok(()) => return,
            Err(Undelivered::Full(msg)) => {
                busy(server, *msg).await;
                return;
            }
            Err(Undelivered::NotLive(msg)) => *msg,
        };
        let RoomMsg::Stanza(stanza, ctx) = msg else {
            return;
        };
        // Not live: load it, or create it on a join.
        let Some(room) = self.load_or_create(server, &name, &stanza).await else {
            return;
        };
        let Some(server_arc) = server.handle() else {
            return;
        };
        let msg = RoomMsg::Stanza(stanza, ctx);
        if let Err(Undelivered::Full(msg) | Undelivered::NotLive(msg)) =
            self.spawn_and_deliver(server_arc, room, msg)
        {
            busy(server, *msg).await;
        }
    }

    /// Queues `msg` to a live room, or gives it back saying why not.
    fn try_deliver(&self, name: &str, msg: RoomMsg) -> Result<(), Undelivered> {
        let rooms = lock(&self.rooms);
        let Some(handle) = rooms.get(name) else {
            return Err(Undelivered::NotLive(Box::new(msg)));
        };
        match handle.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg)) => Err(Undelivered::Full(Box::new(msg))),
            Err(mpsc::error::TrySendError::Closed(msg)) => Err(Undelivered::NotLive(Box::new(msg))),
        }
    }

    async fn load_or_create(&self, server: &Server, name: &str, stanza: &Stanza) -> Option<Room> {
        let room_jid = stanza.to().to_bare();
        match server.stores().muc_room(&self.opts.domain, name).await {
            Ok(Some(stored)) => {
                return Some(Room::from_stored(
                    room_jid,
                    &stored,
                    &self.opts.defaults,
                    self.opts.limits,
                ));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(room = %room_jid, error = %e, "cannot load room");
                reply_error(
                    server,
                    stanza,
                    StanzaErrorCondition::InternalServerError,
                    "",
                )
                .await;
                return None;
            }
        }
        let is_join = stanza.kind() == Kind::Presence
            && stanza.type_attr().is_none()
            && stanza.to().resource().is_some();
        if !is_join {
            // Presence that is not a join (a late unavailable, an error) needs no answer.
            if stanza.kind() != Kind::Presence {
                reply_error(
                    server,
                    stanza,
                    StanzaErrorCondition::ItemNotFound,
                    "no such room",
                )
                .await;
            }
            return None;
        }
        if !self.allowed(server, &self.opts.access_create, stanza.from()) {
            reply_error(
                server,
                stanza,
                StanzaErrorCondition::NotAllowed,
                "you may not create rooms",
            )
            .await;
            return None;
        }
        let mut config = self.opts.defaults.clone();
        if config.persistent && !self.allowed(server, &self.opts.access_persistent, stanza.from()) {
            config.persistent = false;
        }
        Some(Room::create(
            room_jid,
            config,
            self.opts.limits,
            &stanza.from().to_bare(),
        ))
    }

    /// Starts a room's task (unless another caller just did) and queues `msg` to it.
    fn spawn_and_deliver(
        &self,
        server: Arc<Server>,
        room: Room,
        msg: RoomMsg,
    ) -> Result<(), Undelivered> {
        let Some(this) = self.this.upgrade() else {
            return Err(Undelivered::NotLive(Box::new(msg)));
        };
        let name = room.jid().node().unwrap_or_default().to_owned();
        {
            let mut rooms = lock(&self.rooms);
            if !rooms.contains_key(&name) {
                let (tx, rx) = mpsc::channel(ROOM_QUEUE);
                let summary = Arc::new(Mutex::new(summary_of(&room)));
                rooms.insert(
                    name.clone(),
                    RoomHandle {
                        tx,
                        summary: summary.clone(),
                    },
                );
                tokio::spawn(run_room(this, server, room, rx, summary));
            }
        }
        self.try_deliver(&name, msg)
    }

    /// Bookkeeping after a room's stanza: per-user room counts.
    fn count(&self, fx: &Effects) {
        let mut conferences = lock(&self.conferences);
        for jid in &fx.entered {
            *conferences.entry(jid.as_str().to_owned()).or_insert(0) += 1;
        }
        for jid in &fx.left {
            if let Some(n) = conferences.get_mut(jid.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    conferences.remove(jid.as_str());
                }
            }
        }
    }

    /// Stanzas to the service's own JID.
    async fn to_service(&self, server: &Server, stanza: Stanza) {
        if stanza.kind() != Kind::Iq {
            if stanza.kind() == Kind::Message {
                reply_error(
                    server,
                    &stanza,
                    StanzaErrorCondition::ServiceUnavailable,
                    "",
                )
                .await;
            }
            return;
        }
        let Some(kind) = IqType::parse(stanza.type_attr()) else {
            return;
        };
        if !kind.is_request() {
            return;
        }
        let Some(payload) = stanza.payload() else {
            reply_error(server, &stanza, StanzaErrorCondition::BadRequest, "").await;
            return;
        };
        let answer = match (kind, payload.ns().as_str(), payload.name()) {
            (IqType::Get, ns::DISCO_INFO, "query") if payload.attr("node").is_none() => {
                Ok(Some(self.disco_info()))
            }
            (IqType::Get, ns::DISCO_ITEMS, "query") => self.disco_items(server).await.map(Some),
            (IqType::Get, ns::PING, "ping") => Ok(None),
            (IqType::Set, ADMIN_NS, "command") if is_host(server, stanza.from()) => {
                self.admin(server, payload).await.map(Some)
            }
            _ => Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
        };
        let reply = match answer {
            Ok(payload) => Some(stanza.iq_result(payload)),
            Err(e) => stanza.error_reply(&e),
        };
        if let Some(reply) = reply {
            server.route(reply).await;
        }
    }

    fn disco_info(&self) -> Element {
        let mut q = Element::bare("query", ns::DISCO_INFO);
        q.append_child(element(
            "identity",
            ns::DISCO_INFO,
            &[
                ("category", "conference"),
                ("type", "text"),
                ("name", "Chatrooms"),
            ],
        ));
        for var in [
            MUC,
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            super::room::SELF_PING,
            "http://jabber.org/protocol/muc#stable_id",
        ] {
            q.append_child(element("feature", ns::DISCO_INFO, &[("var", var)]));
        }
        q
    }

    /// Public rooms, live or stored, sorted by name, at most `max_rooms_discoitems`.
    async fn disco_items(&self, server: &Server) -> Result<Element, StanzaError> {
        let mut listed: HashMap<String, (String, usize)> = HashMap::new();
        for (name, summary) in self.live_summaries() {
            if summary.public {
                listed.insert(name, (summary.title, summary.occupants));
            }
        }
        let stored = server
            .stores()
            .muc_rooms(&self.opts.domain)
            .await
            .map_err(|e| {
                tracing::error!(service = %self.opts.domain, error = %e, "cannot list rooms");
                StanzaError::new(StanzaErrorCondition::InternalServerError)
            })?;
        let live: Vec<String> = self.live_summaries().into_iter().map(|(n, _)| n).collect();
        for room in stored {
            if live.contains(&room.name) {
                continue;
            }
            let config = RoomConfig::decode(&room.options, &self.opts.defaults);
            if config.public {
                listed.insert(room.name, (config.title, 0));
            }
        }
        let mut names: Vec<(String, (String, usize))> = listed.into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut q = Element::bare("query", ns::DISCO_ITEMS);
        for (name, (title, occupants)) in names.into_iter().take(self.opts.max_rooms_discoitems) {
            let jid = format!("{name}@{}", self.opts.domain);
            let shown = if title.is_empty() {
                name.clone()
            } else {
                title
            };
            q.append_child(element(
                "item",
                ns::DISCO_ITEMS,
                &[("jid", &jid), ("name", &format!("{shown} ({occupants})"))],
            ));
        }
        Ok(q)
    }

    fn live_summaries(&self) -> Vec<(String, Summary)> {
        let rooms = lock(&self.rooms);
        let mut out: Vec<(String, Summary)> = rooms
            .iter()
            .map(|(name, h)| (name.clone(), lock(&h.summary).clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The admin requests behind the MUC commands: `<command xmlns='urn:starling:muc:admin:0'
    /// name='…'><arg>…</arg>…</command>`, answered with `<result><line>…</line>…</result>`.
    /// Only accepted from one of this server's hosts (see `is_host`): a client's `from` is
    /// stamped by c2s and a remote server's is checked by s2s, so neither can forge it.
    async fn admin(&self, server: &Server, command: &Element) -> Result<Element, StanzaError> {
        let args: Vec<String> = command
            .children()
            .filter(|c| c.is("arg", ADMIN_NS))
            .map(Element::text)
            .collect();
        let arg = |i: usize| args.get(i).map_or("", String::as_str);
        let fail =
            |text: String| StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text);
        let lines: Vec<String> = match command.attr("name").unwrap_or_default() {
            "muc_online_rooms" => self
                .live_summaries()
                .into_iter()
                .map(|(name, _)| format!("{name}@{}", self.opts.domain))
                .collect(),
            "create_room" => {
                let room_jid = self.room_jid(arg(0)).map_err(fail)?;
                let name = room_jid.node().unwrap_or_default().to_owned();
                let exists = lock(&self.rooms).contains_key(&name)
                    || server
                        .stores()
                        .muc_room(&self.opts.domain, &name)
                        .await
                        .map_err(|e| fail(e.to_string()))?
                        .is_some();
                if exists {
                    return Err(fail(format!("room {room_jid} already exists")));
                }
                let room = Room::new(room_jid, self.opts.defaults.clone(), self.opts.limits);
                if room.config().persistent {
                    server
                        .stores()
                        .put_muc_room(&room.to_stored())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                let server = server
                    .handle()
                    .ok_or_else(|| fail("server stopping".to_owned()))?;
                let (tx, rx) = oneshot::channel();
                let msg = RoomMsg::Command(RoomCommand::Options, tx);
                if self.spawn_and_deliver(server, room, msg).is_err() {
                    return Err(fail("room busy".to_owned()));
                }
                let _ = rx.await;
                Vec::new()
            }
            name @ ("destroy_room"
            | "get_room_occupants"
            | "get_room_options"
            | "change_room_option"
            | "set_room_affiliation") => {
                let room_jid = self.room_jid(arg(0)).map_err(fail)?;
                let command = match name {
                    "destroy_room" => RoomCommand::Destroy,
                    "get_room_occupants" => RoomCommand::Occupants,
                    "get_room_options" => RoomCommand::Options,
                    "change_room_option" => {
                        RoomCommand::ChangeOption(arg(1).to_owned(), arg(2).to_owned())
                    }
                    _ => {
                        let jid = BareJid::parse(arg(1))
                            .map_err(|e| fail(format!("bad JID {}: {e}", arg(1))))?;
                        let affiliation = Affiliation::parse(arg(2))
                            .ok_or_else(|| fail(format!("bad affiliation {}", arg(2))))?;
                        RoomCommand::SetAffiliation(jid, affiliation)
                    }
                };
                self.command(server, &room_jid, command)
                    .await
                    .map_err(fail)?
            }
            other => return Err(fail(format!("unknown MUC command {other}"))),
        };
        let mut result = Element::bare("result", ADMIN_NS);
        for line in lines {
            result.append_child(text_element("line", ADMIN_NS, &line));
        }
        Ok(result)
    }

    fn room_jid(&self, name: &str) -> Result<BareJid, String> {
        BareJid::new(Some(name), &self.opts.domain)
            .map_err(|e| format!("bad room name {name}: {e}"))
    }

    /// Runs an admin operation in a room's task, loading the room if it is stored.
    async fn command(
        &self,
        server: &Server,
        room_jid: &BareJid,
        command: RoomCommand,
    ) -> Result<Vec<String>, String> {
        let name = room_jid.node().unwrap_or_default().to_owned();
        let (tx, rx) = oneshot::channel();
        let msg = RoomMsg::Command(command, tx);
        let msg = match self.try_deliver(&name, msg) {
            Ok(()) => return rx.await.map_err(|_| "room stopped".to_owned())?,
            Err(Undelivered::Full(_)) => return Err("room busy".to_owned()),
            Err(Undelivered::NotLive(msg)) => *msg,
        };
        let stored = server
            .stores()
            .muc_room(&self.opts.domain, &name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("room {room_jid} does not exist"))?;
        let room = Room::from_stored(
            room_jid.clone(),
            &stored,
            &self.opts.defaults,
            self.opts.limits,
        );
        let server = server.handle().ok_or("server stopping")?;
        if self.spawn_and_deliver(server, room, msg).is_err() {
            return Err("room busy".to_owned());
        }
        rx.await.map_err(|_| "room stopped".to_owned())?
    }
}

impl Service for MucService {
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()> {
        Box::pin(self.route_stanza(server, stanza))
    }

    /// In a cluster each room runs on the node placement picks (`starling_core::placement`).
    fn placed(&self) -> bool {
        true
    }

    /// Rooms placed elsewhere now (every room when the node stops) shut down here; their
    /// occupants rejoin on the new node (status 332).
    fn placement_changed(&self, server: &Server) {
        let stopping = server.state() == starling_core::server::NodeState::Stopping;
        let cluster = server.sm().cluster();
        let names: Vec<String> = lock(&self.rooms).keys().cloned().collect();
        for name in names {
            let Ok(jid) = self.room_jid(&name) else {
                continue;
            };
            let elsewhere = cluster.as_ref().is_some_and(|cluster| {
                cluster
                    .place(jid.as_str())
                    .is_some_and(|owner| owner != cluster.node_name())
            });
            if !(stopping || elsewhere) {
                continue;
            }
            let (tx, _) = oneshot::channel();
            if self
                .try_deliver(&name, RoomMsg::Command(RoomCommand::ShutDown, tx))
                .is_err()
            {
                tracing::warn!(room = %jid, "room busy; it moves on its next placement change");
            }
        }
    }
}

/// The task of one live room.
async fn run_room(
    service: Arc<MucService>,
    server: Arc<Server>,
    mut room: Room,
    mut rx: mpsc::Receiver<RoomMsg>,
    summary: Arc<Mutex<Summary>>,
) {
    let name = room.jid().node().unwrap_or_default().to_owned();
    // Whether the store holds this room, so that only a change of persistence touches it.
    // A room created by a join is not stored yet, even if persistent by default.
    let mut stored = room.config().persistent && !room.is_fresh();
    loop {
        let Some(msg) = rx.recv().await else { break };
        let mut shut_down = false;
        let fx = match msg {
            RoomMsg::Stanza(stanza, ctx) => room.handle(&stanza, &ctx),
            RoomMsg::Command(RoomCommand::ShutDown, reply) => {
                shut_down = true;
                let _ = reply.send(Ok(Vec::new()));
                room.shut_down()
            }
            RoomMsg::Command(command, reply) => {
                let (fx, answer) = run_command(&mut room, command);
                let _ = reply.send(answer);
                fx
            }
        };
        service.count(&fx);
        *lock(&summary) = summary_of(&room);
        if fx.destroyed {
            if let Err(e) = server
                .stores()
                .delete_muc_room(service.domain(), &name)
                .await
            {
                tracing::error!(room = %room.jid(), error = %e, "cannot delete room");
            }
        } else if room.config().persistent && (fx.persist || !stored) {
            match server.stores().put_muc_room(&room.to_stored()).await {
                Ok(()) => stored = true,
                Err(e) => tracing::error!(room = %room.jid(), error = %e, "cannot store room"),
            }
        } else if !room.config().persistent && stored {
            // Made temporary: it no longer survives a restart.
            match server
                .stores()
                .delete_muc_room(service.domain(), &name)
                .await
            {
                Ok(_) => stored = false,
                Err(e) => tracing::error!(room = %room.jid(), error = %e, "cannot delete room"),
            }
        }
        for stanza in fx.out {
            server.route(stanza).await;
        }
        let stop = fx.destroyed || shut_down || (room.is_empty() && !room.config().persistent);
        if stop {
            // Stanzas already queued keep the room alive: they were sent to it. The check and
            // the removal happen under the lock every sender takes, so none can slip in.
            let stopped = {
                let mut rooms = lock(&service.rooms);
                let stopped = fx.destroyed || shut_down || rx.is_empty();
                if stopped {
                    rooms.remove(&name);
                }
                stopped
            };
            if stopped && shut_down {
                // Routed again: placement sends them to the room's new node.
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    if let RoomMsg::Stanza(stanza, _) = msg {
                        server.route(stanza).await;
                    }
                }
                tracing::info!(room = %room.jid(), "room shut down here: placed on another node, or stopping");
                break;
            }
            if stopped {
                rx.close();
                // Anything queued between the check and the close is answered.
                while let Ok(msg) = rx.try_recv() {
                    if let RoomMsg::Stanza(stanza, _) = msg
                        && let Some(reply) = stanza
                            .error_reply(&StanzaError::new(StanzaErrorCondition::ItemNotFound))
                    {
                        server.route(reply).await;
                    }
                }
                break;
            }
        }
    }
}

fn run_command(room: &mut Room, command: RoomCommand) -> (Effects, Result<Vec<String>, String>) {
    match command {
        RoomCommand::Occupants => {
            let lines = room
                .occupants()
                .iter()
                .map(|o| format!("{}\t{}\t{}", o.jid, o.nick, o.role.name()))
                .collect();
            (Effects::default(), Ok(lines))
        }
        RoomCommand::Options => {
            let lines = room
                .config()
                .options()
                .into_iter()
                .map(|(k, v)| format!("{k}\t{v}"))
                .collect();
            (Effects::default(), Ok(lines))
        }
        RoomCommand::ChangeOption(name, value) => match room.change_option(&name, &value) {
            Ok(fx) => (fx, Ok(Vec::new())),
            Err(e) => (Effects::default(), Err(e)),
        },
        RoomCommand::SetAffiliation(jid, affiliation) => {
            let fx = room.set_affiliation_by_admin(&jid, affiliation, "");
            (fx, Ok(Vec::new()))
        }
        RoomCommand::Destroy => (room.destroy(None, ""), Ok(Vec::new())),
        RoomCommand::ShutDown => (room.shut_down(), Ok(Vec::new())),
    }
}

fn summary_of(room: &Room) -> Summary {
    Summary {
        title: room.config().title.clone(),
        public: room.config().public,
        occupants: room.occupants().len(),
    }
}

/// True if `from` is one of this server's hosts (a server-internal sender).
/// An admin request (`ADMIN_NS`) from one of our hosts.
fn is_admin_request(server: &Server, stanza: &Stanza) -> bool {
    stanza.kind() == Kind::Iq
        && stanza.type_attr() == Some("set")
        && is_host(server, stanza.from())
        && stanza.payload().is_some_and(|p| p.is("command", ADMIN_NS))
}

fn is_host(server: &Server, from: &Jid) -> bool {
    from.node().is_none() && from.resource().is_none() && server.is_local(from.domain())
}

async fn reply_error(
    server: &Server,
    stanza: &Stanza,
    condition: StanzaErrorCondition,
    text: &str,
) {
    let mut error = StanzaError::new(condition);
    if !text.is_empty() {
        error = error.with_text(text);
    }
    if let Some(reply) = stanza.error_reply(&error) {
        server.route(reply).await;
    }
}

/// Answers a stanza its room could not take with `<resource-constraint type='wait'/>`.
async fn busy(server: &Server, msg: RoomMsg) {
    match msg {
        RoomMsg::Stanza(stanza, _) => {
            let error = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("room busy");
            if let Some(reply) = stanza.error_reply(&error) {
                server.route(reply).await;
            }
        }
        RoomMsg::Command(_, reply) => {
            let _ = reply.send(Err("room busy".to_owned()));
        }
    }
}
