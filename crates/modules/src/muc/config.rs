//! A room's configuration (XEP-0045 §10.2, the `muc#roomconfig` form of §15.5.3), its
//! encoding for storage, and the ejabberd option names used by `default_room_options` and the
//! `get_room_options` / `change_room_option` commands.
//!
//! One vocabulary, ejabberd's (`title`, `allow_change_subj`, `members_only`, ...), is used for
//! the stored encoding (one `name=value` per line), the defaults in the config file and the
//! admin commands, so an option added here needs no migration and no second table.

use starling_xmpp::Element;
use starling_xmpp::ns;
use starling_xmpp::stanza::{element, text_element};

/// Who may send private messages to occupants (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowPm {
    /// Every occupant.
    Anyone,
    /// Participants and moderators, not visitors.
    Participants,
    /// Moderators only.
    Moderators,
    /// Nobody.
    Nobody,
}

impl AllowPm {
    /// The form value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anyone => "anyone",
            Self::Participants => "participants",
            Self::Moderators => "moderators",
            Self::Nobody => "none",
        }
    }

    /// Parses a form value (or ejabberd's boolean `allow_private_messages`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "anyone" | "true" | "1" => Some(Self::Anyone),
            "participants" => Some(Self::Participants),
            "moderators" => Some(Self::Moderators),
            "none" | "false" | "0" => Some(Self::Nobody),
            _ => None,
        }
    }
}

/// The configuration of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    /// `muc#roomconfig_roomname`.
    pub title: String,
    /// `muc#roomconfig_roomdesc`.
    pub description: String,
    /// Survives the last occupant leaving, and a restart (stored).
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    /// Only members (and admins, owners) may enter.
    pub members_only: bool,
    /// Only participants (voice) may speak; newcomers without affiliation are visitors.
    pub moderated: bool,
    /// A password is needed to enter.
    pub password_protected: bool,
    /// The password (`muc#roomconfig_roomsecret`).
    pub password: String,
    /// Semi-anonymous (only moderators see real JIDs) when true, non-anonymous when false.
    pub anonymous: bool,
    /// Most occupants (owners and admins may enter beyond it).
    pub max_users: u32,
    /// Participants may change the subject (otherwise moderators only).
    pub allow_change_subj: bool,
    /// Occupants may invite others (otherwise admins and owners only).
    pub allow_user_invites: bool,
    /// Who may send private messages.
    pub allow_private_messages: AllowPm,
}

/// Default of the service's `max_users` and of a room's `max_users`.
pub const DEFAULT_MAX_USERS: u32 = 200;

impl Default for RoomConfig {
    /// ejabberd's defaults: public, temporary, open, unmoderated, semi-anonymous.
    fn default() -> Self {
        Self {
            title: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password_protected: false,
            password: String::new(),
            anonymous: true,
            max_users: DEFAULT_MAX_USERS,
            allow_change_subj: true,
            allow_user_invites: false,
            allow_private_messages: AllowPm::Anyone,
        }
    }
}

/// The option names, in the order `get_room_options` lists them.
pub const OPTION_NAMES: &[&str] = &[
    "title",
    "description",
    "persistent",
    "public",
    "members_only",
    "moderated",
    "password_protected",
    "password",
    "anonymous",
    "max_users",
    "allow_change_subj",
    "allow_user_invites",
    "allow_private_messages",
];

const FORM_TYPE: &str = "http://jabber.org/protocol/muc#roomconfig";

impl RoomConfig {
    /// Every option as `(name, value)`, values as text (`true`/`false` for booleans).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        let b = |v: bool| v.to_string();
        vec![
            ("title", self.title.clone()),
            ("description", self.description.clone()),
            ("persistent", b(self.persistent)),
            ("public", b(self.public)),
            ("members_only", b(self.members_only)),
            ("moderated", b(self.moderated)),
            ("password_protected", b(self.password_protected)),
            ("password", self.password.clone()),
            ("anonymous", b(self.anonymous)),
            ("max_users", self.max_users.to_string()),
            ("allow_change_subj", b(self.allow_change_subj)),
            ("allow_user_invites", b(self.allow_user_invites)),
            (
                "allow_private_messages",
                self.allow_private_messages.name().to_owned(),
            ),
        ]
    }

    /// Sets one option by its ejabberd name; an unknown name or a bad value is an error
    /// naming it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let flag = || parse_bool(value).ok_or_else(|| format!("{name}: not a boolean: {value}"));
        match name {
            "title" => self.title = value.to_owned(),
            "description" => self.description = value.to_owned(),
            "persistent" => self.persistent = flag()?,
            "public" => self.public = flag()?,
            "members_only" => self.members_only = flag()?,
            "moderated" => self.moderated = flag()?,
            "password_protected" => self.password_protected = flag()?,
            "password" => self.password = value.to_owned(),
            "anonymous" => self.anonymous = flag()?,
            "max_users" => {
                self.max_users = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("max_users: not a positive number: {value}"))?;
            }
            "allow_change_subj" => self.allow_change_subj = flag()?,
            "allow_user_invites" => self.allow_user_invites = flag()?,
            "allow_private_messages" => {
                self.allow_private_messages = AllowPm::parse(value)
                    .ok_or_else(|| format!("allow_private_messages: bad value: {value}"))?;
            }
            _ => return Err(format!("unknown room option: {name}")),
        }
        Ok(())
    }

    /// The storage encoding: one `name=value` per line, newlines in values escaped.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.options() {
            out.push_str(name);
            out.push('=');
            out.push_str(&value.replace('\\', "\\\\").replace('\n', "\\n"));
            out.push('\n');
        }
        out
    }

    /// Decodes [`RoomConfig::encode`]'s output over the defaults; unknown or bad lines are
    /// skipped (a newer node may have written options this one does not know).
    pub fn decode(text: &str, defaults: &Self) -> Self {
        let mut config = defaults.clone();
        for line in text.lines() {
            if let Some((name, value)) = line.split_once('=') {
                let value = unescape(value);
                if let Err(e) = config.set(name, &value) {
                    tracing::debug!(error = %e, "stored room option skipped");
                }
            }
        }
        config
    }

    /// The `muc#roomconfig` form (XEP-0045 §10.2) with the current values.
    pub fn form(&self, max_users_cap: u32) -> Element {
        let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
        x.append_child(text_element("title", ns::DATA_FORMS, "Room configuration"));
        x.append_child(field("FORM_TYPE", "hidden", None, &[FORM_TYPE]));
        let b = |v: bool| if v { "1" } else { "0" };
        x.append_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            Some("Room title"),
            &[&self.title],
        ));
        x.append_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            Some("Room description"),
            &[&self.description],
        ));
        for (var, label, value) in [
            (
                "muc#roomconfig_persistentroom",
                "Make room persistent",
                self.persistent,
            ),
            (
                "muc#roomconfig_publicroom",
                "Make room public searchable",
                self.public,
            ),
            (
                "muc#roomconfig_membersonly",
                "Make room members-only",
                self.members_only,
            ),
            (
                "muc#roomconfig_moderatedroom",
                "Make room moderated",
                self.moderated,
            ),
            (
                "muc#roomconfig_passwordprotectedroom",
                "Make room password protected",
                self.password_protected,
            ),
            (
                "muc#roomconfig_changesubject",
                "Allow occupants to change the subject",
                self.allow_change_subj,
            ),
            (
                "muc#roomconfig_allowinvites",
                "Allow occupants to send invitations",
                self.allow_user_invites,
            ),
        ] {
            x.append_child(field(var, "boolean", Some(label), &[b(value)]));
        }
        x.append_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            Some("Password"),
            &[&self.password],
        ));
        let mut whois = field(
            "muc#roomconfig_whois",
            "list-single",
            Some("Who may discover real JIDs"),
            &[if self.anonymous {
                "moderators"
            } else {
                "anyone"
            }],
        );
        for option in ["moderators", "anyone"] {
            whois.append_child(option_element(option));
        }
        x.append_child(whois);
        let max = self.max_users.to_string();
        let mut max_users = field(
            "muc#roomconfig_maxusers",
            "list-single",
            Some("Maximum number of occupants"),
            &[&max],
        );
        let mut choices: Vec<u32> = [5, 10, 20, 30, 50, 100, 200, 500, 1000]
            .into_iter()
            .filter(|n| *n <= max_users_cap)
            .collect();
        if !choices.contains(&self.max_users) {
            choices.push(self.max_users);
            choices.sort_unstable();
        }
        for n in choices {
            max_users.append_child(option_element(&n.to_string()));
        }
        x.append_child(max_users);
        let mut allowpm = field(
            "muc#roomconfig_allowpm",
            "list-single",
            Some("Who may send private messages"),
            &[self.allow_private_messages.name()],
        );
        for option in ["anyone", "participants", "moderators", "none"] {
            allowpm.append_child(option_element(option));
        }
        x.append_child(allowpm);
        x
    }

    /// Applies a submitted form: fields not given keep their value. An unknown `FORM_TYPE`,
    /// a bad value, or a title/description over the limits is refused with a reason.
    pub fn apply_form(&mut self, form: &Element, limits: FormLimits) -> Result<(), String> {
        let mut next = self.clone();
        for f in form.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> = f
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            let first = values.first().cloned().unwrap_or_default();
            let flag = || parse_bool(&first).ok_or_else(|| format!("{var}: not a boolean"));
            match var {
                "FORM_TYPE" if first != FORM_TYPE => {
                    return Err(format!("unexpected FORM_TYPE {first}"));
                }
                "muc#roomconfig_roomname" => next.title = first,
                "muc#roomconfig_roomdesc" => next.description = first,
                "muc#roomconfig_persistentroom" => next.persistent = flag()?,
                "muc#roomconfig_publicroom" => next.public = flag()?,
                "muc#roomconfig_membersonly" => next.members_only = flag()?,
                "muc#roomconfig_moderatedroom" => next.moderated = flag()?,
                "muc#roomconfig_passwordprotectedroom" => next.password_protected = flag()?,
                "muc#roomconfig_roomsecret" => next.password = first,
                "muc#roomconfig_changesubject" => next.allow_change_subj = flag()?,
                "muc#roomconfig_allowinvites" => next.allow_user_invites = flag()?,
                "muc#roomconfig_whois" => {
                    next.anonymous = match first.as_str() {
                        "moderators" => true,
                        "anyone" => false,
                        _ => return Err(format!("{var}: bad value {first}")),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    next.max_users = match first.as_str() {
                        "" | "none" => limits.max_users,
                        n => n
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("{var}: bad value {first}"))?
                            .min(limits.max_users),
                    }
                }
                "muc#roomconfig_allowpm" => {
                    next.allow_private_messages =
                        AllowPm::parse(&first).ok_or_else(|| format!("{var}: bad value"))?;
                }
                // Fields this server does not offer are ignored, as §10.2 lets a service do.
                _ => {}
            }
        }
        if next.title.chars().count() > limits.max_room_name {
            return Err("room title too long".to_owned());
        }
        if next.description.chars().count() > limits.max_room_desc {
            return Err("room description too long".to_owned());
        }
        if next.password_protected && next.password.is_empty() {
            return Err("a password-protected room needs a password".to_owned());
        }
        *self = next;
        Ok(())
    }
}

/// Service limits a submitted configuration must respect.
#[derive(Clone, Copy, Debug)]
pub struct FormLimits {
    /// The service's `max_users`.
    pub max_users: u32,
    /// `max_room_name`, in characters.
    pub max_room_name: usize,
    /// `max_room_desc`, in characters.
    pub max_room_desc: usize,
}

/// XEP-0004 booleans (and ejabberd's spellings).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) use crate::dataform::field;

fn option_element(value: &str) -> Element {
    let mut o = Element::bare("option", ns::DATA_FORMS);
    o.append_child(text_element("value", ns::DATA_FORMS, value));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FormLimits = FormLimits {
        max_users: 200,
        max_room_name: 20,
        max_room_desc: 50,
    };

    #[test]
    fn encoding_round_trips_with_newlines() {
        let c = RoomConfig {
            title: "Tea\nroom = best\\".to_owned(),
            persistent: true,
            allow_private_messages: AllowPm::Moderators,
            max_users: 42,
            ..RoomConfig::default()
        };
        let decoded = RoomConfig::decode(&c.encode(), &RoomConfig::default());
        assert_eq!(decoded, c);
        // Unknown and broken lines are skipped, not fatal.
        let d = RoomConfig::decode("bogus=1\npublic=maybe\nmoderated=true", &c);
        assert!(d.moderated);
        assert!(d.public);
    }

    #[test]
    fn set_checks_names_and_values() {
        let mut c = RoomConfig::default();
        assert!(c.set("members_only", "true").is_ok());
        assert!(c.members_only);
        assert!(c.set("max_users", "0").is_err());
        assert!(c.set("colour", "blue").is_err());
        assert!(c.set("moderated", "perhaps").is_err());
        assert_eq!(c.options().len(), OPTION_NAMES.len());
        for ((name, _), expected) in c.options().iter().zip(OPTION_NAMES) {
            assert_eq!(name, expected);
        }
    }

    fn submitted(fields: &[(&str, &str)]) -> Element {
        let mut x = element("x", ns::DATA_FORMS, &[("type", "submit")]);
        x.append_child(field("FORM_TYPE", "hidden", None, &[FORM_TYPE]));
        for (var, value) in fields {
            x.append_child(field(var, "text-single", None, &[value]));
        }
        x
    }

    #[test]
    fn form_submission_applies_and_validates() {
        let mut c = RoomConfig::default();
        let form = submitted(&[
            ("muc#roomconfig_roomname", "Lobby"),
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_whois", "anyone"),
            ("muc#roomconfig_maxusers", "1000"),
            ("muc#roomconfig_allowpm", "none"),
        ]);
        c.apply_form(&form, LIMITS).unwrap();
        assert_eq!(c.title, "Lobby");
        assert!(c.persistent);
        assert!(!c.anonymous);
        assert_eq!(c.max_users, 200, "capped by the service");
        assert_eq!(c.allow_private_messages, AllowPm::Nobody);

        let before = c.clone();
        let too_long = submitted(&[("muc#roomconfig_roomname", "x".repeat(21).as_str())]);
        assert!(c.apply_form(&too_long, LIMITS).is_err());
        let no_secret = submitted(&[("muc#roomconfig_passwordprotectedroom", "1")]);
        assert!(c.apply_form(&no_secret, LIMITS).is_err());
        assert_eq!(c, before, "a refused form changes nothing");
    }

    #[test]
    fn form_lists_current_values() {
        let c = RoomConfig {
            members_only: true,
            ..RoomConfig::default()
        };
        let form = c.form(200);
        let value = |var: &str| {
            form.children()
                .find(|f| f.attr("var") == Some(var))
                .and_then(|f| f.get_child("value", ns::DATA_FORMS))
                .map(Element::text)
        };
        assert_eq!(value("FORM_TYPE").as_deref(), Some(FORM_TYPE));
        assert_eq!(value("muc#roomconfig_membersonly").as_deref(), Some("1"));
        assert_eq!(value("muc#roomconfig_whois").as_deref(), Some("moderators"));
        // Round trip: submitting the form as offered changes nothing.
        let mut again = c.clone();
        let mut submit = form.clone();
        starling_xmpp::stanza::set_attr(&mut submit, "type", "submit");
        again.apply_form(&submit, LIMITS).unwrap();
        assert_eq!(again, c);
    }
}
