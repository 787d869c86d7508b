//! One room's state machine (XEP-0045), sans I/O: a stanza and the time in, stanzas out.
//!
//! [`Room::handle`] takes a stanza addressed to the room (bare JID) or to an occupant
//! (room/nick) and returns [`Effects`]: the stanzas to route, whether the persistent state
//! changed, whether the room was destroyed. The room's task (`muc::service`) owns the value,
//! routes the output and stores the state; nothing here awaits or reads a clock.
//!
//! Implemented: entering (§7.2: errors in the XEP's order — banned `<forbidden/>`,
//! members-only `<registration-required/>`, password `<not-authorized/>`, nick
//! `<conflict/>`, full `<service-unavailable/>` — status codes 110, 100, 170, 201, history with
//! `<delay/>` per `<history/>`, then the subject), presence updates, nick changes (§7.6, 303),
//! leaving (§7.14), groupchat messages (§7.4; visitors of moderated rooms `<forbidden/>`),
//! subject changes (§8.1, `allow_change_subj`), private messages (§7.5, `allowpm`), mediated
//! invitations and declines (§7.8.2, §7.8.3), self-ping (XEP-0410), disco#info with the
//! `muc#roominfo` form (§6.4), the admin protocol (§8, §9: kick 307, ban 301, voice,
//! member/admin/owner/outcast lists; removal from a members-only room 321) and the owner
//! protocol (§10: configuration form, cancel, destruction with an alternate venue).
//!
//! Every stanza the room sends is `from` the room or `room/nick` of an occupant: the sender's
//! own address never passes through (§5.1 anonymity, and no stanza from a JID the sender does
//! not own). IQs to other occupants are not forwarded (`<service-unavailable/>`).

use std::collections::{BTreeMap, VecDeque};

use starling_storage::StoredRoom;
use starling_xmpp::Element;
use starling_xmpp::error::{ErrorType, StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, FullJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{
    IqType, Kind, MessageType, PresenceType, Stanza, element, set_attr, text_element,
};

use super::config::{AllowPm, FormLimits, RoomConfig};

/// `http://jabber.org/protocol/muc`
pub const MUC: &str = "http://jabber.org/protocol/muc";
/// `http://jabber.org/protocol/muc#user`
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// `http://jabber.org/protocol/muc#admin`
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// `http://jabber.org/protocol/muc#owner`
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0410 feature.
pub const SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";

/// A long-lived relation between a user and a room (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    /// Banned.
    Outcast,
    /// No relation.
    None,
    /// Member.
    Member,
    /// Admin.
    Admin,
    /// Owner.
    Owner,
}

impl Affiliation {
    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outcast => "outcast",
            Self::None => "none",
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// Parses a protocol name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outcast" => Some(Self::Outcast),
            "none" => Some(Self::None),
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

/// A temporary relation inside one visit (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Not in the room.
    None,
    /// May not speak in moderated rooms.
    Visitor,
    /// May speak.
    Participant,
    /// May kick and grant voice.
    Moderator,
}

impl Role {
    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Visitor => "visitor",
            Self::Participant => "participant",
            Self::Moderator => "moderator",
        }
    }

    /// Parses a protocol name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "visitor" => Some(Self::Visitor),
            "participant" => Some(Self::Participant),
            "moderator" => Some(Self::Moderator),
            _ => None,
        }
    }
}

/// One occupant.
#[derive(Clone, Debug)]
pub struct Occupant {
    /// The nickname (the resource of the occupant JID).
    pub nick: String,
    /// The real full JID.
    pub jid: FullJid,
    /// The current role.
    pub role: Role,
    /// The last available presence's children (show, status, caps), without MUC payloads.
    presence: Vec<Element>,
    last_message: Option<i64>,
    last_presence: Option<i64>,
}

/// A message kept for history on join.
#[derive(Clone, Debug)]
struct HistoryEntry {
    /// The broadcast message (from room/nick, no `to`).
    message: Element,
    /// When it was sent, µs since the epoch.
    at: i64,
    /// Its size in characters, for `maxchars`.
    chars: usize,
}

/// Service-wide limits and policies a room applies.
#[derive(Clone, Copy, Debug)]
pub struct RoomLimits {
    /// `history_size`: messages kept for new occupants.
    pub history_size: usize,
    /// `min_message_interval` in µs (0: none).
    pub min_message_interval: i64,
    /// `min_presence_interval` in µs (0: none).
    pub min_presence_interval: i64,
    /// Form limits (service `max_users`, `max_room_name`, `max_room_desc`).
    pub form: FormLimits,
}

/// What the caller knows about one stanza's sender that the room cannot work out itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// The time, µs since the Unix epoch.
    pub now: i64,
    /// The sender is a service administrator (`access_admin`): an owner of every room.
    pub service_admin: bool,
    /// The sender may make rooms persistent (`access_persistent`).
    pub may_persist: bool,
    /// The sender may not enter another room (`max_user_conferences` reached).
    pub too_many_rooms: bool,
}

/// The outcome of one stanza.
#[derive(Debug, Default)]
pub struct Effects {
    /// Stanzas to route, in order.
    pub out: Vec<Stanza>,
    /// The stored state (configuration, affiliations, subject) changed.
    pub persist: bool,
    /// The room was destroyed: delete it and stop.
    pub destroyed: bool,
    /// Bare JIDs that entered the room (for `max_user_conferences`).
    pub entered: Vec<BareJid>,
    /// Bare JIDs that left it.
    pub left: Vec<BareJid>,
}

/// One room.
#[derive(Debug)]
pub struct Room {
    jid: BareJid,
    config: RoomConfig,
    affiliations: BTreeMap<String, (Affiliation, String)>,
    occupants: Vec<Occupant>,
    subject: String,
    subject_author: String,
    history: VecDeque<HistoryEntry>,
    limits: RoomLimits,
    /// Created by a join and not configured yet: a `cancel` of the form destroys it (§10.1.3).
    fresh: bool,
}

type Outcome = Result<(), StanzaError>;

fn err(condition: StanzaErrorCondition) -> StanzaError {
    StanzaError::new(condition)
}

impl Room {
    /// A room created by `creator`'s first join (instant room, §10.1.2): the creator is owner.
    pub fn create(jid: BareJid, config: RoomConfig, limits: RoomLimits, creator: &BareJid) -> Self {
        let mut room = Self::new(jid, config, limits);
        room.affiliations.insert(
            creator.as_str().to_owned(),
            (Affiliation::Owner, String::new()),
        );
        room.fresh = true;
        room
    }

    /// A room with no occupants and no affiliations (the `create_room` command).
    pub fn new(jid: BareJid, config: RoomConfig, limits: RoomLimits) -> Self {
        Self {
            jid,
            config,
            affiliations: BTreeMap::new(),
            occupants: Vec::new(),
            subject: String::new(),
            subject_author: String::new(),
            history: VecDeque::new(),
            limits,
            fresh: false,
        }
    }

    /// A persistent room loaded from storage.
    pub fn from_stored(
        jid: BareJid,
        stored: &StoredRoom,
        defaults: &RoomConfig,
        limits: RoomLimits,
    ) -> Self {
        let mut room = Self::new(jid, RoomConfig::decode(&stored.options, defaults), limits);
        room.subject.clone_from(&stored.subject);
        room.subject_author.clone_from(&stored.subject_author);
        for (jid, affiliation, reason) in &stored.affiliations {
            if let Some(a) = Affiliation::parse(affiliation)
                && a != Affiliation::None
            {
                room.affiliations.insert(jid.clone(), (a, reason.clone()));
            }
        }
        room
    }

    /// The state to store.
    pub fn to_stored(&self) -> StoredRoom {
        StoredRoom {
            service: self.jid.domain().to_owned(),
            name: self.jid.node().unwrap_or_default().to_owned(),
            options: self.config.encode(),
            subject: self.subject.clone(),
            subject_author: self.subject_author.clone(),
            affiliations: self
                .affiliations
                .iter()
                .map(|(j, (a, r))| (j.clone(), a.name().to_owned(), r.clone()))
                .collect(),
        }
    }

    /// The room's bare JID.
    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    /// The configuration.
    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    /// The occupants, in order of entry.
    pub fn occupants(&self) -> &[Occupant] {
        &self.occupants
    }

    /// The current subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// True for a room created by a join and not configured yet (XEP-0045 §10.1).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// True when nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    /// The affiliation of a bare JID.
    pub fn affiliation(&self, jid: &BareJid) -> Affiliation {
        self.affiliations
            .get(jid.as_str())
            .map_or(Affiliation::None, |(a, _)| *a)
    }

    /// Changes one option (the `change_room_option` command); occupants are told with
    /// status 104 as for a form submission.
    pub fn change_option(&mut self, name: &str, value: &str) -> Result<Effects, String> {
        let mut next = self.config.clone();
        next.set(name, value)?;
        let mut fx = Effects {
            persist: true,
            ..Effects::default()
        };
        self.reconfigure(next, &mut fx);
        Ok(fx)
    }

    /// Sets an affiliation on the service's authority (the `set_room_affiliation` command).
    pub fn set_affiliation_by_admin(
        &mut self,
        jid: &BareJid,
        affiliation: Affiliation,
        reason: &str,
    ) -> Effects {
        let mut fx = Effects {
            persist: true,
            ..Effects::default()
        };
        self.apply_affiliation(jid, affiliation, reason, None, &mut fx);
        fx
    }

    /// Destroys the room (§10.9): every occupant gets an unavailable presence with `<destroy/>`.
    pub fn destroy(&mut self, alternate: Option<&str>, reason: &str) -> Effects {
        let mut fx = Effects {
            destroyed: true,
            ..Effects::default()
        };
        let occupants = std::mem::take(&mut self.occupants);
        for o in &occupants {
            let mut x = Element::bare("x", MUC_USER);
            x.append_child(element(
                "item",
                MUC_USER,
                &[("affiliation", "none"), ("role", "none")],
            ));
            let mut destroy = Element::bare("destroy", MUC_USER);
            if let Some(alt) = alternate {
                set_attr(&mut destroy, "jid", alt);
            }
            if !reason.is_empty() {
                destroy.append_child(text_element("reason", MUC_USER, reason));
            }
            x.append_child(destroy);
            let mut p = element("presence", ns::CLIENT, &[("type", "unavailable")]);
            p.append_child(x);
            self.push(&mut fx, p, &o.nick, &o.jid);
            fx.left.push(o.jid.to_bare());
        }
        fx
    }

    /// The room stops running here while it lives on (XEP-0045 status code 332, "the service is
    /// being shut down"): it moved to another cluster node, or this node stops. Every occupant gets
    /// its own unavailable presence with status 332 and rejoins; the room's stored state
    /// stays.
    pub fn shut_down(&mut self) -> Effects {
        let mut fx = Effects::default();
        let occupants = std::mem::take(&mut self.occupants);
        for o in &occupants {
            let mut x = Element::bare("x", MUC_USER);
            x.append_child(element(
                "item",
                MUC_USER,
                &[
                    ("affiliation", self.affiliation(&o.jid.to_bare()).name()),
                    ("role", "none"),
                ],
            ));
            x.append_child(element("status", MUC_USER, &[("code", "110")]));
            x.append_child(element("status", MUC_USER, &[("code", "332")]));
            let mut p = element("presence", ns::CLIENT, &[("type", "unavailable")]);
            p.append_child(x);
            self.push(&mut fx, p, &o.nick, &o.jid);
            fx.left.push(o.jid.to_bare());
        }
        fx
    }

    /// Handles one stanza addressed to the room or to one of its occupants.
    pub fn handle(&mut self, stanza: &Stanza, ctx: &Context) -> Effects {
        let mut fx = Effects::default();
        let result = match (stanza.kind(), stanza.to().resource()) {
            (Kind::Presence, Some(nick)) => self.presence(stanza, nick, ctx, &mut fx),
            (Kind::Presence, None) => match PresenceType::parse(stanza.type_attr()) {
                // §7.2.1: entering needs a nick; other presence to the bare room is ignored.
                Some(PresenceType::Available) => Err(err(StanzaErrorCondition::JidMalformed)),
                _ => Ok(()),
            },
            (Kind::Message, None) => self.message_to_room(stanza, ctx, &mut fx),
            (Kind::Message, Some(nick)) => self.private_message(stanza, nick, ctx, &mut fx),
            (Kind::Iq, None) => self.iq_to_room(stanza, ctx, &mut fx),
            (Kind::Iq, Some(nick)) => self.iq_to_occupant(stanza, nick, &mut fx),
        };
        if let Err(e) = result
            && let Some(reply) = stanza.error_reply(&e.with_by(self.jid.as_str()))
        {
            fx.out.push(reply);
        }
        fx
    }

    // --- presence ---

    fn presence(
        &mut self,
        stanza: &Stanza,
        nick: &str,
        ctx: &Context,
        fx: &mut Effects,
    ) -> Outcome {
        let Some(from) = stanza.from().clone().into_full().ok() else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        let current = self.occupant_index_by_jid(&from);
        match (PresenceType::parse(stanza.type_attr()), current) {
            (Some(PresenceType::Available), None) => self.enter(stanza, &from, nick, ctx, fx),
            (Some(PresenceType::Available), Some(i)) => {
                let same_nick = self.occupants.get(i).is_some_and(|o| o.nick == nick);
                if same_nick {
                    self.update_presence(stanza, i, ctx, fx)
                } else {
                    self.change_nick(stanza, i, nick, fx)
                }
            }
            // An error presence from an occupant means its client is gone (§7.2.? and ejabberd).
            (Some(PresenceType::Unavailable | PresenceType::Error), Some(i)) => {
                let status = stanza
                    .element()
                    .get_child("status", ns::CLIENT)
                    .map(Element::text);
                self.leave(i, status.as_deref(), fx);
                Ok(())
            }
            (None, _) => Err(err(StanzaErrorCondition::BadRequest)),
            // Subscriptions and stray unavailable presence: nothing to do.
            _ => Ok(()),
        }
    }

    fn enter(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        nick: &str,
        ctx: &Context,
        fx: &mut Effects,
    ) -> Outcome {
        let bare = from.to_bare();
        let affiliation = if ctx.service_admin {
            Affiliation::Owner
        } else {
            self.affiliation(&bare)
        };
        let muc_x = stanza.element().get_child("x", MUC);
        if affiliation == Affiliation::Outcast {
            return Err(err(StanzaErrorCondition::Forbidden).with_text("you are banned"));
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return Err(err(StanzaErrorCondition::RegistrationRequired)
                .with_text("this room is members-only"));
        }
        if self.config.password_protected && affiliation < Affiliation::Owner {
            let given = muc_x
                .and_then(|x| x.get_child("password", MUC))
                .map(Element::text);
            if given.as_deref() != Some(self.config.password.as_str()) {
                return Err(
                    err(StanzaErrorCondition::NotAuthorized).with_text("a password is required")
                );
            }
        }
        if let Some(other) = self.occupants.iter().find(|o| o.nick == nick)
            && other.jid.to_bare() != bare
        {
            return Err(err(StanzaErrorCondition::Conflict).with_text("nickname in use"));
        }
        if self.occupants.iter().any(|o| o.nick == nick) {
            // The same account under the same nick from another resource: one session per
            // nick here (ejabberd's multi-session is not supported).
            return Err(err(StanzaErrorCondition::Conflict)
                .with_text("nickname in use by another of your resources"));
        }
        let full = self.occupants.len()
            >= usize::try_from(self.effective_max_users()).unwrap_or(usize::MAX);
        if full && affiliation < Affiliation::Admin {
            return Err(err(StanzaErrorCondition::ServiceUnavailable).with_text("room is full"));
        }
        if ctx.too_many_rooms {
            return Err(err(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("too many rooms joined"));
        }
        let role = self.default_role(affiliation);
        let occupant = Occupant {
            nick: nick.to_owned(),
            jid: from.clone(),
            role,
            presence: presence_children(stanza.element()),
            last_message: None,
            last_presence: Some(ctx.now),
        };
        // §7.2.3: existing occupants' presence to the newcomer first.
        for o in &self.occupants {
            let p = self.presence_of(o, from, &[]);
            self.push(fx, p, &o.nick, from);
        }
        self.occupants.push(occupant.clone());
        fx.entered.push(bare.clone());
        // Then the newcomer's presence to everyone else, and to itself with its codes.
        for o in self.occupants.iter().filter(|o| o.jid != *from) {
            let p = self.presence_of(&occupant, &o.jid, &[]);
            self.push(fx, p, nick, &o.jid);
        }
        let mut codes = vec![110];
        if !self.config.anonymous {
            codes.push(100);
        }
        let created = self.fresh && self.affiliation(&bare) == Affiliation::Owner;
        if created {
            codes.push(201);
        }
        let own = self.presence_of(&occupant, from, &codes);
        self.push(fx, own, nick, from);
        // §7.2.15 history, then §7.2.16 the subject (always, so clients know the join is done).
        self.send_history(
            muc_x.and_then(|x| x.get_child("history", MUC)),
            from,
            ctx,
            fx,
        );
        let mut subject = element("message", ns::CLIENT, &[("type", "groupchat")]);
        subject.append_child(text_element("subject", ns::CLIENT, &self.subject));
        let author = if self.subject_author.is_empty() {
            None
        } else {
            Some(self.subject_author.clone())
        };
        match author {
            Some(author) => self.push(fx, subject, &author, from),
            None => self.push_from_room(fx, subject, from),
        }
        Ok(())
    }

    fn send_history(
        &self,
        request: Option<&Element>,
        to: &FullJid,
        ctx: &Context,
        fx: &mut Effects,
    ) {
        let attr = |name: &'static str| request.and_then(|h| h.attr(name));
        let max_stanzas = attr("maxstanzas").and_then(|v| v.parse::<usize>().ok());
        let max_chars = attr("maxchars").and_then(|v| v.parse::<usize>().ok());
        let since = attr("since").and_then(crate::mam::parse_datetime);
        let seconds = attr("seconds")
            .and_then(|v| v.parse::<i64>().ok())
            .map(|s| ctx.now.saturating_sub(s.saturating_mul(1_000_000)));
        let not_before = since.max(seconds).unwrap_or(i64::MIN);
        // Newest first, so the limits keep the most recent messages.
        let mut chosen: Vec<&HistoryEntry> = Vec::new();
        let mut chars = 0usize;
        for entry in self.history.iter().rev() {
            if entry.at < not_before || max_stanzas.is_some_and(|m| chosen.len() >= m) {
                break;
            }
            chars = chars.saturating_add(entry.chars);
            if max_chars.is_some_and(|m| chars > m) {
                break;
            }
            chosen.push(entry);
        }
        for entry in chosen.into_iter().rev() {
            let mut message = entry.message.clone();
            let delay = element(
                "delay",
                ns::DELAY,
                &[("from", self.jid.as_str()), ("stamp", &stamp(entry.at))],
            );
            message.append_child(delay);
            let from = message.attr("from").and_then(|f| Jid::parse(f).ok());
            if let Some(from) = from
                && let Ok(s) = Stanza::new(message, from, to.clone().into())
            {
                fx.out.push(s);
            }
        }
    }

    fn update_presence(
        &mut self,
        stanza: &Stanza,
        i: usize,
        ctx: &Context,
        fx: &mut Effects,
    ) -> Outcome {
        let interval = self.limits.min_presence_interval;
        let Some(o) = self.occupants.get_mut(i) else {
            return Ok(());
        };
        if interval > 0
            && o.last_presence
                .is_some_and(|t| ctx.now.saturating_sub(t) < interval)
        {
            return Err(err(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("presence sent too often"));
        }
        o.last_presence = Some(ctx.now);
        o.presence = presence_children(stanza.element());
        let occupant = o.clone();
        self.broadcast_presence(&occupant, &[], fx);
        Ok(())
    }

    fn change_nick(&mut self, _stanza: &Stanza, i: usize, nick: &str, fx: &mut Effects) -> Outcome {
        if self.occupants.iter().any(|o| o.nick == nick) {
            return Err(err(StanzaErrorCondition::Conflict).with_text("nickname in use"));
        }
        let Some(old) = self.occupants.get(i).cloned() else {
            return Ok(());
        };
        // §7.6.3: unavailable with 303 and the new nick, then available under the new nick.
        for o in &self.occupants {
            let mut p = self.presence_of(&old, &o.jid, &own_codes(&old, o, &[303]));
            set_attr(&mut p, "type", "unavailable");
            if let Some(item) = p
                .get_child_mut("x", MUC_USER)
                .and_then(|x| x.get_child_mut("item", MUC_USER))
            {
                set_attr(item, "nick", nick);
            }
            self.push(fx, p, &old.nick, &o.jid);
        }
        if let Some(o) = self.occupants.get_mut(i) {
            o.nick = nick.to_owned();
        }
        let Some(new) = self.occupants.get(i).cloned() else {
            return Ok(());
        };
        for o in &self.occupants {
            let p = self.presence_of(&new, &o.jid, &own_codes(&new, o, &[]));
            self.push(fx, p, nick, &o.jid);
        }
        Ok(())
    }

    fn leave(&mut self, i: usize, status: Option<&str>, fx: &mut Effects) {
        if i >= self.occupants.len() {
            return;
        }
        let gone = self.occupants.remove(i);
        fx.left.push(gone.jid.to_bare());
        let mut recipients: Vec<FullJid> = self.occupants.iter().map(|o| o.jid.clone()).collect();
        recipients.push(gone.jid.clone());
        for to in recipients {
            let codes: &[u16] = if to == gone.jid { &[110] } else { &[] };
            // Only the MUC payload and the status text go with an unavailable presence.
            let mut p = strip_presence(self.presence_of(&gone, &to, codes));
            set_attr(&mut p, "type", "unavailable");
            if let Some(text) = status {
                p.append_child(text_element("status", ns::CLIENT, text));
            }
            let item_role = p
                .get_child_mut("x", MUC_USER)
                .and_then(|x| x.get_child_mut("item", MUC_USER));
            if let Some(item) = item_role {
                set_attr(item, "role", "none");
            }
            self.push(fx, p, &gone.nick, &to);
        }
    }

    // --- messages ---

    fn message_to_room(&mut self, stanza: &Stanza, ctx: &Context, fx: &mut Effects) -> Outcome {
        let kind = MessageType::parse(stanza.type_attr());
        if kind == MessageType::Error {
            // An error bounced by an occupant's server: that occupant is gone (ejabberd).
            if let Some(i) = stanza
                .from()
                .clone()
                .into_full()
                .ok()
                .and_then(|f| self.occupant_index_by_jid(&f))
            {
                self.leave(i, None, fx);
            }
            return Ok(());
        }
        let Some(i) = self.sender_index(stanza) else {
            return Err(err(StanzaErrorCondition::NotAcceptable)
                .with_text("only occupants may send messages to the room"));
        };
        if kind != MessageType::Groupchat {
            if let Some(x) = stanza.element().get_child("x", MUC_USER) {
                return self.invitation(stanza, x, i, fx);
            }
            return Err(err(StanzaErrorCondition::BadRequest));
        }
        let Some(sender) = self.occupants.get(i).cloned() else {
            return Ok(());
        };
        if sender.role == Role::Visitor && self.config.moderated {
            return Err(err(StanzaErrorCondition::Forbidden)
                .with_text("visitors may not speak in a moderated room"));
        }
        let interval = self.limits.min_message_interval;
        if interval > 0
            && sender
                .last_message
                .is_some_and(|t| ctx.now.saturating_sub(t) < interval)
        {
            return Err(err(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("messages sent too often"));
        }
        if let Some(o) = self.occupants.get_mut(i) {
            o.last_message = Some(ctx.now);
        }
        let subject = stanza.element().get_child("subject", ns::CLIENT);
        let has_body = stanza.element().get_child("body", ns::CLIENT).is_some();
        if let Some(subject) = subject
            && !has_body
        {
            let may = sender.role == Role::Moderator
                || (self.config.allow_change_subj && sender.role >= Role::Participant);
            if !may {
                return Err(err(StanzaErrorCondition::Forbidden)
                    .with_text("you may not change the subject"));
            }
            self.subject = subject.text();
            self.subject_author.clone_from(&sender.nick);
            fx.persist = true;
        }
        let mut message = stanza.element().clone();
        starling_xmpp::stanza::remove_attr(&mut message, "to");
        set_attr(
            &mut message,
            "from",
            self.occupant_jid(&sender.nick).as_str(),
        );
        if has_body {
            let chars = starling_xmpp::codec::to_bytes(&message).len();
            self.history.push_back(HistoryEntry {
                message: message.clone(),
                at: ctx.now,
                chars,
            });
            while self.history.len() > self.limits.history_size {
                self.history.pop_front();
            }
        }
        for o in &self.occupants {
            self.push(fx, message.clone(), &sender.nick, &o.jid);
        }
        Ok(())
    }

    fn invitation(&mut self, stanza: &Stanza, x: &Element, i: usize, fx: &mut Effects) -> Outcome {
        let Some(sender) = self.occupants.get(i).cloned() else {
            return Ok(());
        };
        let sender_affiliation = self.affiliation(&sender.jid.to_bare());
        for decline in x.children().filter(|c| c.is("decline", MUC_USER)) {
            // §7.8.3: declines travel back to the inviter from the room, with the decliner's
            // real JID (the inviter knew it).
            let Some(to) = decline.attr("to").and_then(|t| Jid::parse(t).ok()) else {
                return Err(err(StanzaErrorCondition::JidMalformed));
            };
            let mut out = Element::bare("message", ns::CLIENT);
            let mut ux = Element::bare("x", MUC_USER);
            let mut d = element("decline", MUC_USER, &[("from", sender.jid.as_str())]);
            for reason in decline.children().filter(|c| c.is("reason", MUC_USER)) {
                d.append_child(reason.clone());
            }
            ux.append_child(d);
            out.append_child(ux);
            self.push_from_room_to(fx, out, to);
        }
        let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", MUC_USER)).collect();
        if invites.is_empty() {
            return Ok(());
        }
        let may = self.config.allow_user_invites || sender_affiliation >= Affiliation::Admin;
        if !may || sender.role < Role::Participant && self.config.moderated {
            return Err(err(StanzaErrorCondition::Forbidden)
                .with_text("you may not invite others to this room"));
        }
        for invite in invites {
            let Some(to) = invite.attr("to").and_then(|t| BareJid::parse(t).ok()) else {
                return Err(err(StanzaErrorCondition::JidMalformed));
            };
            if self.config.members_only && self.affiliation(&to) == Affiliation::None {
                if sender_affiliation < Affiliation::Admin {
                    return Err(err(StanzaErrorCondition::Forbidden)
                        .with_text("only admins may invite to a members-only room"));
                }
                // §7.8.2: an admin's invitation to a members-only room makes a member.
                self.affiliations
                    .insert(to.as_str().to_owned(), (Affiliation::Member, String::new()));
                fx.persist = true;
            }
            let mut out = Element::bare("message", ns::CLIENT);
            let mut ux = Element::bare("x", MUC_USER);
            let mut inv = element("invite", MUC_USER, &[("from", sender.jid.as_str())]);
            for reason in invite.children().filter(|c| c.is("reason", MUC_USER)) {
                inv.append_child(reason.clone());
            }
            ux.append_child(inv);
            if self.config.password_protected {
                ux.append_child(text_element("password", MUC_USER, &self.config.password));
            }
            out.append_child(ux);
            // XEP-0249's element too, for clients that only understand direct invitations.
            out.append_child(element(
                "x",
                "jabber:x:conference",
                &[("jid", self.jid.as_str())],
            ));
            self.push_from_room_to(fx, out, to.into());
        }
        let _ = stanza;
        Ok(())
    }

    fn private_message(
        &mut self,
        stanza: &Stanza,
        nick: &str,
        ctx: &Context,
        fx: &mut Effects,
    ) -> Outcome {
        let kind = MessageType::parse(stanza.type_attr());
        if kind == MessageType::Error {
            return Ok(());
        }
        if kind == MessageType::Groupchat {
            return Err(err(StanzaErrorCondition::BadRequest)
                .with_text("groupchat messages go to the room"));
        }
        let Some(i) = self.sender_index(stanza) else {
            return Err(err(StanzaErrorCondition::NotAcceptable)
                .with_text("only occupants may send private messages"));
        };
        let Some(sender) = self.occupants.get(i).cloned() else {
            return Ok(());
        };
        let allowed = match self.config.allow_private_messages {
            AllowPm::Anyone => true,
            AllowPm::Participants => sender.role >= Role::Participant,
            AllowPm::Moderators => sender.role == Role::Moderator,
            AllowPm::Nobody => false,
        };
        if !allowed {
            return Err(err(StanzaErrorCondition::Forbidden)
                .with_text("private messages are not allowed in this room"));
        }
        let interval = self.limits.min_message_interval;
        if interval > 0
            && sender
                .last_message
                .is_some_and(|t| ctx.now.saturating_sub(t) < interval)
        {
            return Err(err(StanzaErrorCondition::ResourceConstraint)
                .with_type(ErrorType::Wait)
                .with_text("messages sent too often"));
        }
        let Some(target) = self.occupants.iter().find(|o| o.nick == nick).cloned() else {
            return Err(err(StanzaErrorCondition::ItemNotFound).with_text("no such occupant"));
        };
        if let Some(o) = self.occupants.get_mut(i) {
            o.last_message = Some(ctx.now);
        }
        let mut message = stanza.element().clone();
        // §7.5: the message carries an empty muc#user <x/> so clients know it is a MUC PM.
        if message.get_child("x", MUC_USER).is_none() {
            message.append_child(Element::bare("x", MUC_USER));
        }
        self.push(fx, message, &sender.nick, &target.jid);
        Ok(())
    }

    // --- IQs ---

    fn iq_to_occupant(&self, stanza: &Stanza, nick: &str, fx: &mut Effects) -> Outcome {
        let Some(kind) = IqType::parse(stanza.type_attr()) else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        if !kind.is_request() {
            return Ok(());
        }
        let ping = stanza.payload().is_some_and(|p| p.is("ping", ns::PING));
        let sender = stanza
            .from()
            .clone()
            .into_full()
            .ok()
            .and_then(|f| self.occupant_index_by_jid(&f))
            .and_then(|i| self.occupants.get(i));
        match sender {
            // XEP-0410: a ping to one's own occupant JID is answered by the room.
            Some(o) if o.nick == nick && ping => {
                fx.out.push(stanza.iq_result(None));
                Ok(())
            }
            Some(_) => Err(err(StanzaErrorCondition::ServiceUnavailable)),
            None => Err(err(StanzaErrorCondition::NotAcceptable)
                .with_text("you are not an occupant of this room")),
        }
    }

    fn iq_to_room(&mut self, stanza: &Stanza, ctx: &Context, fx: &mut Effects) -> Outcome {
        let Some(kind) = IqType::parse(stanza.type_attr()) else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        if !kind.is_request() {
            return Ok(());
        }
        let Some(payload) = stanza.payload() else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        let answer = match (kind, payload.ns().as_str(), payload.name()) {
            (IqType::Get, ns::DISCO_INFO, "query") => Some(self.disco_info(payload)),
            (IqType::Get, ns::DISCO_ITEMS, "query") => {
                Some(Element::bare("query", ns::DISCO_ITEMS))
            }
            (IqType::Get, ns::PING, "ping") => None,
            (_, MUC_OWNER, "query") => self.owner(kind, payload, stanza, ctx, fx)?,
            (_, MUC_ADMIN, "query") => self.admin(kind, payload, stanza, ctx, fx)?,
            _ => return Err(err(StanzaErrorCondition::ServiceUnavailable)),
        };
        fx.out.push(stanza.iq_result(answer));
        Ok(())
    }

    fn disco_info(&self, query: &Element) -> Element {
        let mut q = Element::bare("query", ns::DISCO_INFO);
        if let Some(node) = query.attr("node") {
            set_attr(&mut q, "node", node);
        }
        let name = if self.config.title.is_empty() {
            self.jid.node().unwrap_or_default()
        } else {
            self.config.title.as_str()
        };
        q.append_child(element(
            "identity",
            ns::DISCO_INFO,
            &[("category", "conference"), ("type", "text"), ("name", name)],
        ));
        let c = &self.config;
        let features = [
            MUC,
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            SELF_PING,
            "http://jabber.org/protocol/muc#stable_id",
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.anonymous {
                "muc_semianonymous"
            } else {
                "muc_nonanonymous"
            },
            if c.password_protected {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
        ];
        for var in features {
            q.append_child(element("feature", ns::DISCO_INFO, &[("var", var)]));
        }
        let mut x = element("x", ns::DATA_FORMS, &[("type", "result")]);
        let field = super::config::field;
        x.append_child(field(
            "FORM_TYPE",
            "hidden",
            None,
            &["http://jabber.org/protocol/muc#roominfo"],
        ));
        x.append_child(field(
            "muc#roominfo_description",
            "text-single",
            Some("Description"),
            &[&c.description],
        ));
        x.append_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            Some("Name"),
            &[&c.title],
        ));
        x.append_child(field(
            "muc#roominfo_occupants",
            "text-single",
            Some("Number of occupants"),
            &[&self.occupants.len().to_string()],
        ));
        x.append_child(field(
            "muc#roominfo_subject",
            "text-single",
            Some("Subject"),
            &[&self.subject],
        ));
        x.append_child(field(
            "muc#roomconfig_changesubject",
            "boolean",
            Some("Occupants may change the subject"),
            &[if c.allow_change_subj { "1" } else { "0" }],
        ));
        q.append_child(x);
        q
    }

    fn sender_affiliation(&self, stanza: &Stanza, ctx: &Context) -> Affiliation {
        if ctx.service_admin {
            Affiliation::Owner
        } else {
            self.affiliation(&stanza.from().to_bare())
        }
    }

    fn owner(
        &mut self,
        kind: IqType,
        query: &Element,
        stanza: &Stanza,
        ctx: &Context,
        fx: &mut Effects,
    ) -> Result<Option<Element>, StanzaError> {
        if self.sender_affiliation(stanza, ctx) != Affiliation::Owner {
            return Err(err(StanzaErrorCondition::Forbidden).with_text("owners only"));
        }
        if kind == IqType::Get {
            let mut q = Element::bare("query", MUC_OWNER);
            q.append_child(self.config.form(self.limits.form.max_users));
            return Ok(Some(q));
        }
        if let Some(destroy) = query.get_child("destroy", MUC_OWNER) {
            let reason = destroy
                .get_child("reason", MUC_OWNER)
                .map(Element::text)
                .unwrap_or_default();
            let alternate = destroy.attr("jid").map(str::to_owned);
            let mut done = self.destroy(alternate.as_deref(), &reason);
            fx.out.append(&mut done.out);
            fx.left.append(&mut done.left);
            fx.destroyed = true;
            return Ok(None);
        }
        let Some(form) = query.get_child("x", ns::DATA_FORMS) else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        match form.attr("type") {
            Some("cancel") => {
                // §10.1.3: cancelling the initial configuration destroys the new room.
                if self.fresh {
                    let mut done = self.destroy(None, "");
                    fx.out.append(&mut done.out);
                    fx.left.append(&mut done.left);
                    fx.destroyed = true;
                }
                Ok(None)
            }
            Some("submit") => {
                let mut next = self.config.clone();
                next.apply_form(form, self.limits.form)
                    .map_err(|reason| err(StanzaErrorCondition::NotAcceptable).with_text(reason))?;
                if next.persistent && !self.config.persistent && !ctx.may_persist {
                    return Err(err(StanzaErrorCondition::Forbidden)
                        .with_text("you may not make rooms persistent"));
                }
                self.fresh = false;
                fx.persist = true;
                self.reconfigure(next, fx);
                Ok(None)
            }
            _ => Err(err(StanzaErrorCondition::BadRequest)),
        }
    }

    /// Installs a new configuration and tells occupants (§10.2.1 status 104, 172/173).
    fn reconfigure(&mut self, next: RoomConfig, fx: &mut Effects) {
        let was_anonymous = self.config.anonymous;
        let became_members_only = next.members_only && !self.config.members_only;
        self.config = next;
        self.fresh = false;
        let mut codes = vec![104];
        if was_anonymous && !self.config.anonymous {
            codes.push(172);
        } else if !was_anonymous && self.config.anonymous {
            codes.push(173);
        }
        let recipients: Vec<FullJid> = self.occupants.iter().map(|o| o.jid.clone()).collect();
        for to in &recipients {
            let mut m = element("message", ns::CLIENT, &[("type", "groupchat")]);
            let mut x = Element::bare("x", MUC_USER);
            for code in &codes {
                x.append_child(element("status", MUC_USER, &[("code", &code.to_string())]));
            }
            m.append_child(x);
            self.push_from_room(fx, m, to);
        }
        if became_members_only {
            // §9.8 / status 322: occupants without membership are removed.
            let outsiders: Vec<String> = self
                .occupants
                .iter()
                .filter(|o| self.affiliation(&o.jid.to_bare()) < Affiliation::Member)
                .map(|o| o.nick.clone())
                .collect();
            for nick in outsiders {
                self.remove_occupant(&nick, 322, None, fx);
            }
        }
    }

    fn admin(
        &mut self,
        kind: IqType,
        query: &Element,
        stanza: &Stanza,
        ctx: &Context,
        fx: &mut Effects,
    ) -> Result<Option<Element>, StanzaError> {
        let actor_affiliation = self.sender_affiliation(stanza, ctx);
        let actor = stanza
            .from()
            .clone()
            .into_full()
            .ok()
            .and_then(|f| self.occupant_index_by_jid(&f))
            .and_then(|i| self.occupants.get(i))
            .cloned();
        let actor_role = if actor_affiliation >= Affiliation::Admin {
            Role::Moderator
        } else {
            actor.as_ref().map_or(Role::None, |o| o.role)
        };
        let items: Vec<&Element> = query
            .children()
            .filter(|c| c.is("item", MUC_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(err(StanzaErrorCondition::BadRequest));
        }
        if kind == IqType::Get {
            return self
                .admin_list(items, actor_affiliation, actor_role)
                .map(Some);
        }
        // Check every item before applying any, so a refused request changes nothing.
        let mut changes = Vec::new();
        for item in &items {
            changes.push(self.check_admin_item(item, actor_affiliation, actor_role)?);
        }
        let actor_nick = actor.map(|a| a.nick);
        for change in changes {
            match change {
                AdminChange::Role { nick, role, reason } => {
                    self.apply_role(&nick, role, &reason, actor_nick.as_deref(), fx);
                }
                AdminChange::Affiliation {
                    jid,
                    affiliation,
                    reason,
                } => {
                    fx.persist = true;
                    self.apply_affiliation(&jid, affiliation, &reason, actor_nick.as_deref(), fx);
                }
            }
        }
        Ok(None)
    }

    fn admin_list(
        &self,
        items: Vec<&Element>,
        actor_affiliation: Affiliation,
        actor_role: Role,
    ) -> Result<Element, StanzaError> {
        let mut q = Element::bare("query", MUC_ADMIN);
        for item in items {
            if let Some(a) = item.attr("affiliation").and_then(Affiliation::parse) {
                // §9.5 member lists for admins; §10.5 owner and admin lists for owners, read by
                // admins too (as ejabberd allows).
                if actor_affiliation < Affiliation::Admin || a == Affiliation::None {
                    return Err(err(StanzaErrorCondition::Forbidden));
                }
                for (jid, (aff, reason)) in self.affiliations.iter().filter(|(_, (x, _))| *x == a) {
                    let mut el = element(
                        "item",
                        MUC_ADMIN,
                        &[("affiliation", aff.name()), ("jid", jid)],
                    );
                    if let Some(nick) = self
                        .occupants
                        .iter()
                        .find(|o| o.jid.to_bare().as_str() == jid)
                        .map(|o| o.nick.as_str())
                    {
                        set_attr(&mut el, "nick", nick);
                    }
                    if !reason.is_empty() {
                        el.append_child(text_element("reason", MUC_ADMIN, reason));
                    }
                    q.append_child(el);
                }
            } else if let Some(r) = item.attr("role").and_then(Role::parse) {
                if actor_role != Role::Moderator || r == Role::None {
                    return Err(err(StanzaErrorCondition::Forbidden));
                }
                for o in self.occupants.iter().filter(|o| o.role == r) {
                    let aff = self.affiliation(&o.jid.to_bare());
                    q.append_child(element(
                        "item",
                        MUC_ADMIN,
                        &[
                            ("affiliation", aff.name()),
                            ("role", r.name()),
                            ("nick", &o.nick),
                            ("jid", o.jid.as_str()),
                        ],
                    ));
                }
            } else {
                return Err(err(StanzaErrorCondition::BadRequest));
            }
        }
        Ok(q)
    }

    fn check_admin_item(
        &self,
        item: &Element,
        actor_affiliation: Affiliation,
        actor_role: Role,
    ) -> Result<AdminChange, StanzaError> {
        let reason = item
            .get_child("reason", MUC_ADMIN)
            .map(Element::text)
            .unwrap_or_default();
        if let Some(role) = item.attr("role") {
            let role = Role::parse(role).ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
            let nick = item
                .attr("nick")
                .ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
            let target = self
                .occupants
                .iter()
                .find(|o| o.nick == nick)
                .ok_or_else(|| err(StanzaErrorCondition::ItemNotFound))?;
            let target_affiliation = self.affiliation(&target.jid.to_bare());
            if actor_role != Role::Moderator {
                return Err(err(StanzaErrorCondition::Forbidden));
            }
            // §8.2, §8.5: nobody changes the role of someone of higher or (for moderators
            // without admin rights) equal affiliation; granting or revoking moderator needs
            // admin rights (§9.6, §9.7).
            let touches_moderator = role == Role::Moderator || target.role == Role::Moderator;
            if target_affiliation > actor_affiliation
                || (target_affiliation >= Affiliation::Admin && role != Role::Moderator)
                || (touches_moderator && actor_affiliation < Affiliation::Admin)
            {
                return Err(err(StanzaErrorCondition::NotAllowed));
            }
            return Ok(AdminChange::Role {
                nick: nick.to_owned(),
                role,
                reason,
            });
        }
        if let Some(affiliation) = item.attr("affiliation") {
            let affiliation = Affiliation::parse(affiliation)
                .ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
            let jid = match (item.attr("jid"), item.attr("nick")) {
                (Some(j), _) => Jid::parse(j)
                    .map_err(|_| err(StanzaErrorCondition::JidMalformed))?
                    .to_bare(),
                (None, Some(nick)) => self
                    .occupants
                    .iter()
                    .find(|o| o.nick == nick)
                    .map(|o| o.jid.to_bare())
                    .ok_or_else(|| err(StanzaErrorCondition::ItemNotFound))?,
                (None, None) => return Err(err(StanzaErrorCondition::BadRequest)),
            };
            let current = self.affiliation(&jid);
            // §9: admins manage members and outcasts below them; §10: owners manage all.
            let allowed = match actor_affiliation {
                Affiliation::Owner => true,
                Affiliation::Admin => {
                    current < Affiliation::Admin && affiliation < Affiliation::Admin
                }
                _ => false,
            };
            if !allowed {
                return Err(err(StanzaErrorCondition::Forbidden));
            }
            // §10.6: the last owner cannot go.
            let owners = self
                .affiliations
                .values()
                .filter(|(a, _)| *a == Affiliation::Owner)
                .count();
            if current == Affiliation::Owner && affiliation != Affiliation::Owner && owners <= 1 {
                return Err(
                    err(StanzaErrorCondition::Conflict).with_text("a room must keep an owner")
                );
            }
            return Ok(AdminChange::Affiliation {
                jid,
                affiliation,
                reason,
            });
        }
        Err(err(StanzaErrorCondition::BadRequest))
    }

    fn apply_role(
        &mut self,
        nick: &str,
        role: Role,
        reason: &str,
        actor: Option<&str>,
        fx: &mut Effects,
    ) {
        if role == Role::None {
            self.remove_occupant(nick, 307, Some((reason, actor)), fx);
            return;
        }
        let Some(o) = self.occupants.iter_mut().find(|o| o.nick == nick) else {
            return;
        };
        o.role = role;
        let o = o.clone();
        self.broadcast_presence(&o, &[], fx);
    }

    fn apply_affiliation(
        &mut self,
        jid: &BareJid,
        affiliation: Affiliation,
        reason: &str,
        actor: Option<&str>,
        fx: &mut Effects,
    ) {
        if affiliation == Affiliation::None {
            self.affiliations.remove(jid.as_str());
        } else {
            self.affiliations
                .insert(jid.as_str().to_owned(), (affiliation, reason.to_owned()));
        }
        let nicks: Vec<String> = self
            .occupants
            .iter()
            .filter(|o| o.jid.to_bare() == *jid)
            .map(|o| o.nick.clone())
            .collect();
        for nick in nicks {
            if affiliation == Affiliation::Outcast {
                self.remove_occupant(&nick, 301, Some((reason, actor)), fx);
            } else if affiliation == Affiliation::None && self.config.members_only {
                self.remove_occupant(&nick, 321, Some((reason, actor)), fx);
            } else if let Some(o) = self.occupants.iter_mut().find(|o| o.nick == nick) {
                o.role = match affiliation {
                    Affiliation::Owner | Affiliation::Admin => Role::Moderator,
                    // Losing admin rights drops moderator; membership gives voice.
                    Affiliation::Member => {
                        if o.role == Role::Moderator {
                            Role::Participant
                        } else {
                            o.role.max(Role::Participant)
                        }
                    }
                    _ => {
                        if self.config.moderated {
                            Role::Visitor
                        } else {
                            Role::Participant
                        }
                    }
                };
                let o = o.clone();
                self.broadcast_presence(&o, &[], fx);
            }
        }
    }

    /// Removes an occupant with a status code (307 kick, 301 ban, 321/322 membership).
    fn remove_occupant(
        &mut self,
        nick: &str,
        code: u16,
        why: Option<(&str, Option<&str>)>,
        fx: &mut Effects,
    ) {
        let Some(i) = self.occupants.iter().position(|o| o.nick == nick) else {
            return;
        };
        let gone = self.occupants.remove(i);
        fx.left.push(gone.jid.to_bare());
        let mut recipients: Vec<FullJid> = self.occupants.iter().map(|o| o.jid.clone()).collect();
        recipients.push(gone.jid.clone());
        for to in recipients {
            let mut codes = vec![code];
            if to == gone.jid {
                codes.insert(0, 110);
            }
            let mut p = strip_presence(self.presence_of(&gone, &to, &codes));
            set_attr(&mut p, "type", "unavailable");
            if let Some(item) = p
                .get_child_mut("x", MUC_USER)
                .and_then(|x| x.get_child_mut("item", MUC_USER))
            {
                set_attr(item, "role", "none");
                if let Some((reason, actor)) = why {
                    if let Some(actor) = actor {
                        item.append_child(element("actor", MUC_USER, &[("nick", actor)]));
                    }
                    if !reason.is_empty() {
                        item.append_child(text_element("reason", MUC_USER, reason));
                    }
                }
            }
            self.push(fx, p, &gone.nick, &to);
        }
    }

    // --- helpers ---

    fn effective_max_users(&self) -> u32 {
        self.config.max_users.min(self.limits.form.max_users)
    }

    fn default_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    fn occupant_index_by_jid(&self, jid: &FullJid) -> Option<usize> {
        self.occupants.iter().position(|o| o.jid == *jid)
    }

    fn sender_index(&self, stanza: &Stanza) -> Option<usize> {
        let from = stanza.from().clone().into_full().ok()?;
        self.occupant_index_by_jid(&from)
    }

    fn occupant_jid(&self, nick: &str) -> Jid {
        match self.jid.with_resource(nick) {
            Ok(full) => full.into(),
            // A nick came from a parsed resource, so this cannot fail; fall back to the room.
            Err(_) => self.jid.clone().into(),
        }
    }

    /// `occupant`'s presence as `to` sees it, with extra status codes.
    fn presence_of(&self, occupant: &Occupant, to: &FullJid, codes: &[u16]) -> Element {
        let mut p = Element::bare("presence", ns::CLIENT);
        for child in &occupant.presence {
            p.append_child(child.clone());
        }
        let affiliation = self.affiliation(&occupant.jid.to_bare());
        let mut item = element(
            "item",
            MUC_USER,
            &[
                ("affiliation", affiliation.name()),
                ("role", occupant.role.name()),
            ],
        );
        let viewer_sees_jids = !self.config.anonymous
            || *to == occupant.jid
            || self
                .occupants
                .iter()
                .find(|o| o.jid == *to)
                .is_some_and(|o| o.role == Role::Moderator);
        if viewer_sees_jids {
            set_attr(&mut item, "jid", occupant.jid.as_str());
        }
        let mut x = Element::bare("x", MUC_USER);
        x.append_child(item);
        for code in codes {
            x.append_child(element("status", MUC_USER, &[("code", &code.to_string())]));
        }
        p.append_child(x);
        p
    }

    fn broadcast_presence(&self, occupant: &Occupant, codes: &[u16], fx: &mut Effects) {
        for o in &self.occupants {
            let p = self.presence_of(occupant, &o.jid, &own_codes(occupant, o, codes));
            self.push(fx, p, &occupant.nick, &o.jid);
        }
    }

    /// Queues `element` from `room/nick` to `to`.
    fn push(&self, fx: &mut Effects, element: Element, nick: &str, to: &FullJid) {
        if let Ok(s) = Stanza::new(element, self.occupant_jid(nick), to.clone().into()) {
            fx.out.push(s);
        }
    }

    fn push_from_room(&self, fx: &mut Effects, element: Element, to: &FullJid) {
        self.push_from_room_to(fx, element, to.clone().into());
    }

    fn push_from_room_to(&self, fx: &mut Effects, element: Element, to: Jid) {
        if let Ok(s) = Stanza::new(element, self.jid.clone().into(), to) {
            fx.out.push(s);
        }
    }
}

/// A role or affiliation change checked by the admin protocol.
enum AdminChange {
    Role {
        nick: String,
        role: Role,
        reason: String,
    },
    Affiliation {
        jid: BareJid,
        affiliation: Affiliation,
        reason: String,
    },
}

/// Adds 110 when the recipient is the occupant itself.
fn own_codes(occupant: &Occupant, recipient: &Occupant, codes: &[u16]) -> Vec<u16> {
    let mut all = Vec::with_capacity(codes.len() + 1);
    if occupant.jid == recipient.jid {
        all.push(110);
    }
    all.extend_from_slice(codes);
    all
}

/// The presence children kept for broadcast: everything but MUC payloads and errors.
fn presence_children(presence: &Element) -> Vec<Element> {
    presence
        .children()
        .filter(|c| !(c.has_ns(MUC) || c.has_ns(MUC_USER) || c.name() == "error"))
        .cloned()
        .collect()
}

/// An unavailable presence keeps only the MUC `<x/>` (the status is added by the caller).
fn strip_presence(p: Element) -> Element {
    let mut out = Element::bare("presence", ns::CLIENT);
    for child in p.children().filter(|c| c.has_ns(MUC_USER)) {
        out.append_child(child.clone());
    }
    out
}

/// XEP-0082 UTC timestamp with milliseconds.
fn stamp(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let millis = micros.rem_euclid(1_000_000) / 1_000;
    let whole = crate::time::format_datetime(seconds);
    let base = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{base}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "tea@conference.localhost";

    fn limits() -> RoomLimits {
        RoomLimits {
            history_size: 5,
            min_message_interval: 0,
            min_presence_interval: 0,
            form: FormLimits {
                max_users: 200,
                max_room_name: 50,
                max_room_desc: 50,
            },
        }
    }

    fn ctx(now: i64) -> Context {
        Context {
            now,
            may_persist: true,
            ..Context::default()
        }
    }

    fn new_room() -> Room {
        Room::create(
            BareJid::parse(ROOM).unwrap(),
            RoomConfig::default(),
            limits(),
            &BareJid::parse("alice@localhost").unwrap(),
        )
    }

    fn stanza(xml: &str, from: &str, to: &str) -> Stanza {
        let el: Element = xml
            .replace("<presence", "<presence xmlns='jabber:client'")
            .replace("<message", "<message xmlns='jabber:client'")
            .replace("<iq", "<iq xmlns='jabber:client'")
            .parse()
            .unwrap();
        Stanza::new(el, Jid::parse(from).unwrap(), Jid::parse(to).unwrap()).unwrap()
    }

    fn join(room: &mut Room, user: &str, nick: &str, extra: &str) -> Effects {
        let s = stanza(
            &format!("<presence><x xmlns='{MUC}'>{extra}</x></presence>"),
            &format!("{user}@localhost/res"),
            &format!("{ROOM}/{nick}"),
        );
        room.handle(&s, &ctx(1_000_000))
    }

    fn to<'a>(fx: &'a Effects, jid: &str) -> Vec<&'a Stanza> {
        fx.out.iter().filter(|s| s.to().as_str() == jid).collect()
    }

    fn codes(s: &Stanza) -> Vec<String> {
        s.element()
            .get_child("x", MUC_USER)
            .map(|x| {
                x.children()
                    .filter(|c| c.name() == "status")
                    .filter_map(|c| c.attr("code").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn item(s: &Stanza) -> Element {
        s.element()
            .get_child("x", MUC_USER)
            .and_then(|x| x.get_child("item", MUC_USER))
            .cloned()
            .unwrap()
    }

    fn condition(fx: &Effects) -> Option<String> {
        fx.out.iter().find(|s| s.is_error()).and_then(|s| {
            let e = s.element().get_child("error", ns::CLIENT)?;
            StanzaError::from_element(e).map(|e| e.condition.name().to_owned())
        })
    }

    #[test]
    fn creator_enters_as_owner_with_201_then_subject() {
        let mut room = new_room();
        let fx = join(&mut room, "alice", "Alice", "");
        let out = to(&fx, "alice@localhost/res");
        assert_eq!(out.len(), 2, "{:?}", fx.out);
        assert_eq!(out[0].from().as_str(), "tea@conference.localhost/Alice");
        assert_eq!(codes(out[0]), ["110", "201"]);
        let it = item(out[0]);
        assert_eq!(it.attr("affiliation"), Some("owner"));
        assert_eq!(it.attr("role"), Some("moderator"));
        assert_eq!(it.attr("jid"), Some("alice@localhost/res"));
        // The subject (empty) closes the join.
        assert!(out[1].element().get_child("subject", ns::CLIENT).is_some());
        assert_eq!(fx.entered.len(), 1);
    }

    #[test]
    fn second_occupant_sees_first_and_jids_follow_anonymity() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        let fx = join(&mut room, "bob", "Bob", "");
        let bob = to(&fx, "bob@localhost/res");
        // Alice's presence first, then his own (110, no 201), then the subject.
        assert_eq!(bob[0].from().as_str(), "tea@conference.localhost/Alice");
        // Semi-anonymous: a participant does not see real JIDs.
        assert_eq!(item(bob[0]).attr("jid"), None);
        assert_eq!(codes(bob[1]), ["110"]);
        assert_eq!(item(bob[1]).attr("role"), Some("participant"));
        // Alice, a moderator, sees Bob's real JID.
        let alice = to(&fx, "alice@localhost/res");
        assert_eq!(alice.len(), 1);
        assert_eq!(item(alice[0]).attr("jid"), Some("bob@localhost/res"));

        // Non-anonymous room: status 100 and JIDs for everyone.
        room.config.anonymous = false;
        let fx = join(&mut room, "carol", "Carol", "");
        let carol = to(&fx, "carol@localhost/res");
        assert_eq!(item(carol[1]).attr("jid"), Some("bob@localhost/res"));
        assert_eq!(codes(carol[2]), ["110", "100"]);
    }

    #[test]
    fn shutting_down_tells_each_occupant_332_and_keeps_affiliations() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        let fx = room.shut_down();
        assert!(room.is_empty());
        assert!(!fx.destroyed);
        assert_eq!(fx.left.len(), 2);
        for user in ["alice", "bob"] {
            let out = to(&fx, &format!("{user}@localhost/res"));
            assert_eq!(out.len(), 1, "{:?}", fx.out);
            assert_eq!(out[0].type_attr(), Some("unavailable"));
            assert_eq!(codes(out[0]), ["110", "332"]);
        }
        assert_eq!(
            room.affiliation(&BareJid::parse("alice@localhost").unwrap()),
            Affiliation::Owner
        );
    }

    #[test]
    fn join_errors_in_the_xep_order() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        // Nick taken by someone else.
        let fx = join(&mut room, "bob", "Alice", "");
        assert_eq!(condition(&fx).as_deref(), Some("conflict"));
        assert_eq!(fx.out[0].from().as_str(), "tea@conference.localhost/Alice");
        // Password.
        room.config.password_protected = true;
        room.config.password = "pw".to_owned();
        let fx = join(&mut room, "bob", "Bob", "<password>nope</password>");
        assert_eq!(condition(&fx).as_deref(), Some("not-authorized"));
        let fx = join(&mut room, "bob", "Bob", "<password>pw</password>");
        assert_eq!(condition(&fx), None);
        // Members-only.
        room.config.members_only = true;
        let fx = join(&mut room, "carol", "Carol", "<password>pw</password>");
        assert_eq!(condition(&fx).as_deref(), Some("registration-required"));
        // Banned beats everything.
        room.affiliations.insert(
            "dave@localhost".to_owned(),
            (Affiliation::Outcast, String::new()),
        );
        let fx = join(&mut room, "dave", "Dave", "");
        assert_eq!(condition(&fx).as_deref(), Some("forbidden"));
        // Full.
        room.config.members_only = false;
        room.config.password_protected = false;
        room.config.max_users = 2;
        let fx = join(&mut room, "erin", "Erin", "");
        assert_eq!(condition(&fx).as_deref(), Some("service-unavailable"));
        // Too many rooms for this user.
        room.config.max_users = 10;
        let s = stanza(
            &format!("<presence><x xmlns='{MUC}'/></presence>"),
            "erin@localhost/res",
            &format!("{ROOM}/Erin"),
        );
        let fx = room.handle(
            &s,
            &Context {
                too_many_rooms: true,
                ..ctx(0)
            },
        );
        assert_eq!(condition(&fx).as_deref(), Some("resource-constraint"));
        assert_eq!(room.occupants().len(), 2);
    }

    fn say(room: &mut Room, user: &str, body: &str, now: i64) -> Effects {
        let s = stanza(
            &format!("<message type='groupchat' id='m'><body>{body}</body></message>"),
            &format!("{user}@localhost/res"),
            ROOM,
        );
        room.handle(&s, &ctx(now))
    }

    #[test]
    fn messages_broadcast_and_history_with_limits() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        for i in 0..7 {
            let fx = say(&mut room, "alice", &format!("m{i}"), 1_000_000 + i);
            assert_eq!(fx.out.len(), 2);
            assert!(
                fx.out
                    .iter()
                    .all(|s| s.from().as_str() == "tea@conference.localhost/Alice")
            );
        }
        // A non-occupant may not speak.
        let fx = say(&mut room, "mallory", "hi", 0);
        assert_eq!(condition(&fx).as_deref(), Some("not-acceptable"));
        // History keeps the last 5; maxstanzas limits further.
        let fx = join(&mut room, "carol", "Carol", "<history maxstanzas='3'/>");
        let bodies: Vec<String> = to(&fx, "carol@localhost/res")
            .iter()
            .filter_map(|s| s.element().get_child("body", ns::CLIENT).map(Element::text))
            .collect();
        assert_eq!(bodies, ["m4", "m5", "m6"]);
        let delayed = to(&fx, "carol@localhost/res")
            .into_iter()
            .find(|s| s.element().get_child("body", ns::CLIENT).is_some())
            .unwrap();
        let delay = delayed.element().get_child("delay", ns::DELAY).unwrap();
        assert_eq!(delay.attr("from"), Some(ROOM));
        assert!(
            delay
                .attr("stamp")
                .unwrap()
                .starts_with("1970-01-01T00:00:01")
        );
        let fx = join(&mut room, "dave", "Dave", "<history maxchars='0'/>");
        assert!(
            to(&fx, "dave@localhost/res")
                .iter()
                .all(|s| s.element().get_child("body", ns::CLIENT).is_none())
        );
    }

    #[test]
    fn rate_limit_and_moderation() {
        let mut room = new_room();
        room.limits.min_message_interval = 1_000_000;
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        assert_eq!(condition(&say(&mut room, "bob", "a", 10_000_000)), None);
        let fx = say(&mut room, "bob", "b", 10_500_000);
        assert_eq!(condition(&fx).as_deref(), Some("resource-constraint"));
        assert_eq!(condition(&say(&mut room, "bob", "c", 11_000_000)), None);
        // Moderated: newcomers are visitors and may not speak.
        room.config.moderated = true;
        join(&mut room, "carol", "Carol", "");
        assert_eq!(room.occupants()[2].role, Role::Visitor);
        let fx = say(&mut room, "carol", "hello", 20_000_000);
        assert_eq!(condition(&fx).as_deref(), Some("forbidden"));
        // Voice granted by a moderator.
        let grant = stanza(
            &format!(
                "<iq type='set' id='v'><query xmlns='{MUC_ADMIN}'>\
                 <item nick='Carol' role='participant'/></query></iq>"
            ),
            "alice@localhost/res",
            ROOM,
        );
        let fx = room.handle(&grant, &ctx(0));
        assert!(fx.out.iter().any(|s| s.type_attr() == Some("result")));
        assert_eq!(condition(&say(&mut room, "carol", "hi", 30_000_000)), None);
    }

    #[test]
    fn subject_changes_follow_the_option() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        room.config.allow_change_subj = false;
        let subject = |who: &str| {
            stanza(
                "<message type='groupchat'><subject>Tea</subject></message>",
                &format!("{who}@localhost/res"),
                ROOM,
            )
        };
        let fx = room.handle(&subject("bob"), &ctx(0));
        assert_eq!(condition(&fx).as_deref(), Some("forbidden"));
        let fx = room.handle(&subject("alice"), &ctx(0));
        assert!(fx.persist);
        assert_eq!(room.subject(), "Tea");
        // Newcomers get it, from its author.
        let fx = join(&mut room, "carol", "Carol", "");
        let last = to(&fx, "carol@localhost/res").pop().unwrap();
        assert_eq!(last.from().as_str(), "tea@conference.localhost/Alice");
        assert_eq!(
            last.element()
                .get_child("subject", ns::CLIENT)
                .map(Element::text)
                .as_deref(),
            Some("Tea")
        );
    }

    #[test]
    fn nick_change_and_leave() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        let fx = join(&mut room, "bob", "Robert", "");
        let bob = to(&fx, "bob@localhost/res");
        assert_eq!(bob[0].type_attr(), Some("unavailable"));
        assert_eq!(codes(bob[0]), ["110", "303"]);
        assert_eq!(item(bob[0]).attr("nick"), Some("Robert"));
        assert_eq!(bob[1].from().as_str(), "tea@conference.localhost/Robert");
        // Taken nick.
        let fx = join(&mut room, "bob", "Alice", "");
        assert_eq!(condition(&fx).as_deref(), Some("conflict"));
        // Leave: 110 to self, unavailable to others.
        let s = stanza(
            "<presence type='unavailable'><status>bye</status></presence>",
            "bob@localhost/res",
            &format!("{ROOM}/Robert"),
        );
        let fx = room.handle(&s, &ctx(0));
        let own = to(&fx, "bob@localhost/res");
        assert_eq!(codes(own[0]), ["110"]);
        assert_eq!(
            to(&fx, "alice@localhost/res")[0].type_attr(),
            Some("unavailable")
        );
        assert_eq!(room.occupants().len(), 1);
        assert_eq!(fx.left.len(), 1);
    }

    #[test]
    fn private_messages() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        let pm = stanza(
            "<message type='chat'><body>psst</body></message>",
            "bob@localhost/res",
            &format!("{ROOM}/Alice"),
        );
        let fx = room.handle(&pm, &ctx(0));
        assert_eq!(fx.out.len(), 1);
        assert_eq!(fx.out[0].to().as_str(), "alice@localhost/res");
        assert_eq!(fx.out[0].from().as_str(), "tea@conference.localhost/Bob");
        assert!(fx.out[0].element().get_child("x", MUC_USER).is_some());
        let nobody = stanza(
            "<message type='chat'><body>psst</body></message>",
            "bob@localhost/res",
            &format!("{ROOM}/Nobody"),
        );
        assert_eq!(
            condition(&room.handle(&nobody, &ctx(0))).as_deref(),
            Some("item-not-found")
        );
        room.config.allow_private_messages = AllowPm::Nobody;
        assert_eq!(
            condition(&room.handle(&pm, &ctx(0))).as_deref(),
            Some("forbidden")
        );
        let outsider = stanza(
            "<message type='chat'><body>psst</body></message>",
            "mallory@localhost/res",
            &format!("{ROOM}/Alice"),
        );
        assert_eq!(
            condition(&room.handle(&outsider, &ctx(0))).as_deref(),
            Some("not-acceptable")
        );
    }

    fn admin_set(room: &mut Room, actor: &str, item: &str) -> Effects {
        let s = stanza(
            &format!("<iq type='set' id='a'><query xmlns='{MUC_ADMIN}'>{item}</query></iq>"),
            &format!("{actor}@localhost/res"),
            ROOM,
        );
        room.handle(&s, &ctx(0))
    }

    #[test]
    fn kick_ban_and_lists() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        join(&mut room, "carol", "Carol", "");
        // A participant may not kick.
        let fx = admin_set(&mut room, "bob", "<item nick='Carol' role='none'/>");
        assert_eq!(condition(&fx).as_deref(), Some("forbidden"));
        // The owner kicks Carol: 307 with the reason and the actor.
        let fx = admin_set(
            &mut room,
            "alice",
            "<item nick='Carol' role='none'><reason>spam</reason></item>",
        );
        let carol = to(&fx, "carol@localhost/res");
        assert_eq!(codes(carol[0]), ["110", "307"]);
        let it = item(carol[0]);
        assert_eq!(
            it.get_child("reason", MUC_USER)
                .map(Element::text)
                .as_deref(),
            Some("spam")
        );
        assert_eq!(
            it.get_child("actor", MUC_USER).and_then(|a| a.attr("nick")),
            Some("Alice")
        );
        assert_eq!(codes(to(&fx, "bob@localhost/res")[0]), ["307"]);
        // Ban Bob: 301, stored outcast, may not come back.
        let fx = admin_set(
            &mut room,
            "alice",
            "<item jid='bob@localhost' affiliation='outcast'/>",
        );
        assert!(fx.persist);
        assert_eq!(codes(to(&fx, "bob@localhost/res")[0]), ["110", "301"]);
        assert_eq!(
            condition(&join(&mut room, "bob", "Bob", "")).as_deref(),
            Some("forbidden")
        );
        // The outcast list.
        let get = stanza(
            &format!(
                "<iq type='get' id='l'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast'/></query></iq>"
            ),
            "alice@localhost/res",
            ROOM,
        );
        let fx = room.handle(&get, &ctx(0));
        let list = fx.out[0].payload().unwrap();
        assert_eq!(list.children().count(), 1);
        assert_eq!(
            list.children().next().and_then(|i| i.attr("jid")),
            Some("bob@localhost")
        );
        // The last owner cannot step down.
        let fx = admin_set(
            &mut room,
            "alice",
            "<item jid='alice@localhost' affiliation='member'/>",
        );
        assert_eq!(condition(&fx).as_deref(), Some("conflict"));
        // Stored state round-trips.
        let stored = room.to_stored();
        let back = Room::from_stored(
            room.jid().clone(),
            &stored,
            &RoomConfig::default(),
            limits(),
        );
        assert_eq!(
            back.affiliation(&BareJid::parse("bob@localhost").unwrap()),
            Affiliation::Outcast
        );
        assert_eq!(
            back.affiliation(&BareJid::parse("alice@localhost").unwrap()),
            Affiliation::Owner
        );
    }

    #[test]
    fn self_ping() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        let ping = |from: &str, nick: &str| {
            stanza(
                "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
                from,
                &format!("{ROOM}/{nick}"),
            )
        };
        let fx = room.handle(&ping("alice@localhost/res", "Alice"), &ctx(0));
        assert_eq!(fx.out[0].type_attr(), Some("result"));
        assert_eq!(fx.out[0].from().as_str(), "tea@conference.localhost/Alice");
        let fx = room.handle(&ping("alice@localhost/other", "Alice"), &ctx(0));
        assert_eq!(condition(&fx).as_deref(), Some("not-acceptable"));
    }

    #[test]
    fn owner_configures_and_destroys() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        join(&mut room, "bob", "Bob", "");
        let get = stanza(
            &format!("<iq type='get' id='c'><query xmlns='{MUC_OWNER}'/></iq>"),
            "bob@localhost/res",
            ROOM,
        );
        assert_eq!(
            condition(&room.handle(&get, &ctx(0))).as_deref(),
            Some("forbidden")
        );
        let submit = stanza(
            &format!(
                "<iq type='set' id='c'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
                 <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
                 <field var='muc#roomconfig_whois'><value>anyone</value></field>\
                 </x></query></iq>"
            ),
            "alice@localhost/res",
            ROOM,
        );
        let fx = room.handle(&submit, &ctx(0));
        assert!(fx.persist);
        assert!(room.config().persistent);
        let note = to(&fx, "bob@localhost/res");
        assert_eq!(codes(note[0]), ["104", "172"]);
        // Not allowed to persist: forbidden.
        room.config.persistent = false;
        let fx = room.handle(
            &submit,
            &Context {
                may_persist: false,
                ..ctx(0)
            },
        );
        assert_eq!(condition(&fx).as_deref(), Some("forbidden"));
        // Destroy with an alternate venue.
        let destroy = stanza(
            &format!(
                "<iq type='set' id='d'><query xmlns='{MUC_OWNER}'><destroy jid='new@conference.localhost'>\
                 <reason>moved</reason></destroy></query></iq>"
            ),
            "alice@localhost/res",
            ROOM,
        );
        let fx = room.handle(&destroy, &ctx(0));
        assert!(fx.destroyed);
        let bob = to(&fx, "bob@localhost/res");
        let d = bob[0]
            .element()
            .get_child("x", MUC_USER)
            .and_then(|x| x.get_child("destroy", MUC_USER))
            .unwrap();
        assert_eq!(d.attr("jid"), Some("new@conference.localhost"));
        assert!(room.is_empty());
    }

    #[test]
    fn invitations_are_mediated_from_the_room() {
        let mut room = new_room();
        join(&mut room, "alice", "Alice", "");
        room.config.members_only = true;
        let invite = stanza(
            &format!(
                "<message><x xmlns='{MUC_USER}'><invite to='bob@localhost'><reason>tea?</reason></invite></x></message>"
            ),
            "alice@localhost/res",
            ROOM,
        );
        let fx = room.handle(&invite, &ctx(0));
        assert_eq!(fx.out.len(), 1);
        let m = &fx.out[0];
        assert_eq!(m.from().as_str(), ROOM);
        assert_eq!(m.to().as_str(), "bob@localhost");
        let inv = m
            .element()
            .get_child("x", MUC_USER)
            .and_then(|x| x.get_child("invite", MUC_USER))
            .unwrap();
        assert_eq!(inv.attr("from"), Some("alice@localhost/res"));
        // An admin's invitation to a members-only room makes a member.
        assert_eq!(
            room.affiliation(&BareJid::parse("bob@localhost").unwrap()),
            Affiliation::Member
        );
        assert!(fx.persist);
    }

    #[test]
    fn disco_info_reflects_the_configuration() {
        let mut room = new_room();
        room.config.members_only = true;
        room.config.title = "Tea".to_owned();
        let get = stanza(
            "<iq type='get' id='i'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "zed@localhost/res",
            ROOM,
        );
        let fx = room.handle(&get, &ctx(0));
        let q = fx.out[0].payload().unwrap();
        let features: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
        assert!(features.contains(&"muc_membersonly"));
        assert!(features.contains(&"muc_semianonymous"));
        assert!(features.contains(&MUC));
        assert_eq!(
            q.get_child("identity", ns::DISCO_INFO)
                .and_then(|i| i.attr("name")),
            Some("Tea")
        );
        assert!(q.get_child("x", ns::DATA_FORMS).is_some());
    }
}
