//! `mod_register`: XEP-0077 in-band registration, password change and account removal.
//!
//! Two handlers share the module's settings:
//! - **before authentication** ([`StreamIqHandler`], advertised as the `register` stream
//!   feature): `get` returns the form (§3.1), `set` creates an account (§3.1). The request
//!   must come over an encrypted stream, pass the `ip_access` rule (peer address) and the
//!   `access` rule (would-be JID and address), carry an acceptable password, and respect
//!   ejabberd's `registration_timeout`: at most one successful registration per address per
//!   timeout (a timeout of 0 disables the limit; loopback is not exempt). Addresses are
//!   counted per IPv4 address and per IPv6 /64, since one IPv6 host usually holds a whole /64.
//!   The SCRAM keys are derived on the blocking pool: PBKDF2 is deliberately slow
//!   (DESIGN.md §2.4).
//! - **after authentication** (`IqTarget::Account`, and `IqTarget::Host` because XEP-0077
//!   §3.3's examples address the server): only the account itself may `get` its
//!   registration (§3.1 "already registered"), change its password (§3.3) or remove itself
//!   (§3.2). Removal tells the contacts (RFC 6121 §3.2 / §3.3 cancellations), deletes the
//!   account with its roster and last activity, then closes its sessions.
//!
//! With `redirect_url` set, registration happens elsewhere: `get` returns the §5
//! out-of-band redirection and `set` is refused. `registration_watchers` and
//! `welcome_message` are accepted for ejabberd compatibility and ignored: there is no
//! message delivery to watchers yet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use starling_config::{
    AccessDecision, AccessRequest, ModuleOptions, ModuleSpec, OptionKind, OptionSpec,
};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations, StreamContext,
    StreamIqHandler,
};
use starling_storage::{Credentials, StorageError};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, nodeprep};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Stanza, element, text_element};

use crate::iq;

/// XEP-0066 out-of-band data, used by the XEP-0077 §5 redirection.
const OOB: &str = "jabber:x:oob";

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Access rule deciding which usernames may be registered (default all).",
    },
    OptionSpec {
        name: "ip_access",
        kind: OptionKind::AccessRule,
        doc: "Access rule deciding which client addresses may register (default all).",
    },
    OptionSpec {
        name: "password_strength",
        kind: OptionKind::Int { min: 0, max: 1024 },
        doc: "Minimum estimated password entropy in bits; 0 disables the check (default 0).",
    },
    OptionSpec {
        name: "registration_watchers",
        kind: OptionKind::StringList,
        doc: "JIDs to notify of registrations; accepted and ignored for now.",
    },
    OptionSpec {
        name: "welcome_message",
        kind: OptionKind::Any,
        doc: "Message sent to new users; accepted and ignored for now.",
    },
    OptionSpec {
        name: "redirect_url",
        kind: OptionKind::String,
        doc: "Register on this web page instead of in-band (XEP-0077 §5).",
    },
];

/// `mod_register`.
pub struct Register;

impl Module for Register {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_register",
            aliases: &["register"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let settings = Arc::new(Settings::from_options(options)?);
        let account = Arc::new(AccountRegistration {
            settings: settings.clone(),
        });
        let in_band = Arc::new(InBandRegistration {
            settings,
            limiter: Mutex::new(RegistrationLimiter::default()),
        });
        Ok(Registrations::default()
            .iq(ns::REGISTER, IqTarget::Host, account.clone())
            .iq(ns::REGISTER, IqTarget::Account, account)
            .stream_iq(
                ns::REGISTER,
                in_band,
                Some(("register", ns::REGISTER_FEATURE)),
            ))
    }
}

/// The module's options, with ejabberd's defaults.
struct Settings {
    access: String,
    ip_access: String,
    password_strength: u32,
    redirect_url: Option<String>,
}

impl Settings {
    fn from_options(options: &ModuleOptions) -> Result<Self, ModuleError> {
        let strength = options.int("password_strength").unwrap_or(0);
        let password_strength = u32::try_from(strength).map_err(|_| ModuleError {
            module: "mod_register",
            message: format!("password_strength must not be negative, got {strength}"),
        })?;
        Ok(Self {
            access: options.string("access").unwrap_or("all").to_owned(),
            ip_access: options.string("ip_access").unwrap_or("all").to_owned(),
            password_strength,
            redirect_url: options
                .string("redirect_url")
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
        })
    }

    /// Refuses empty passwords and, when `password_strength` is set, weak ones.
    fn check_password(&self, password: &str) -> Result<(), StanzaError> {
        if password.is_empty() {
            return Err(iq::error(StanzaErrorCondition::NotAcceptable).with_text("empty password"));
        }
        if self.password_strength > 0
            && password_entropy(password) < f64::from(self.password_strength)
        {
            return Err(iq::error(StanzaErrorCondition::NotAcceptable)
                .with_text("the password is too weak"));
        }
        Ok(())
    }
}

/// A rough password entropy estimate in bits: length × log2(size of the character classes
/// used), where the classes are lowercase (26), uppercase (26), digits (10), other printable
/// ASCII (33) and anything else (128). It overrates repetitive passwords, as ejabberd's
/// estimate does; it is a floor against trivial passwords, not a strength meter.
pub fn password_entropy(password: &str) -> f64 {
    let mut classes = [false; 5];
    let mut length: u32 = 0;
    for c in password.chars() {
        length = length.saturating_add(1);
        let class = match c {
            'a'..='z' => 0,
            'A'..='Z' => 1,
            '0'..='9' => 2,
            ' '..='~' => 3,
            _ => 4,
        };
        if let Some(seen) = classes.get_mut(class) {
            *seen = true;
        }
    }
    let pool: u32 = classes
        .iter()
        .zip([26, 26, 10, 33, 128])
        .filter(|(seen, _)| **seen)
        .map(|(_, size)| size)
        .sum();
    if pool == 0 {
        return 0.0;
    }
    f64::from(length) * f64::from(pool).log2()
}

/// ejabberd's `registration_timeout`: one successful registration per address per timeout.
///
/// Sans-I/O: the caller passes `now`. A slot is reserved before the account is created and
/// released if creation fails, so two concurrent requests from one address cannot both pass.
#[derive(Debug, Default)]
pub struct RegistrationLimiter {
    last: HashMap<IpAddr, Instant>,
}

impl RegistrationLimiter {
    /// Reserves `ip`'s slot at `now`, or returns how long it must still wait. Expired entries
    /// are pruned here, so the map holds at most the registrations of one timeout window.
    pub fn try_reserve(
        &mut self,
        ip: IpAddr,
        now: Instant,
        timeout: Duration,
    ) -> Result<(), Duration> {
        let key = limit_key(ip);
        if let Some(at) = self.last.get(&key) {
            let elapsed = now.saturating_duration_since(*at);
            if elapsed < timeout {
                return Err(timeout.saturating_sub(elapsed));
            }
        }
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < timeout);
        self.last.insert(key, now);
        Ok(())
    }

    /// Gives back the slot reserved at `at` (the registration failed).
    pub fn release(&mut self, ip: IpAddr, at: Instant) {
        let key = limit_key(ip);
        if self.last.get(&key) == Some(&at) {
            self.last.remove(&key);
        }
    }

    /// How many addresses currently hold a slot.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True if no address holds a slot.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// The unit the limit counts: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// XEP-0077 on a stream that is not authenticated yet.
struct InBandRegistration {
    settings: Arc<Settings>,
    limiter: Mutex<RegistrationLimiter>,
}

impl StreamIqHandler for InBandRegistration {
    fn handle<'a>(
        &'a self,
        server: &'a Server,
        stream: &'a StreamContext,
        iq: &'a Element,
    ) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let kind = IqType::parse(iq.attr("type"));
            let query = iq.children().next().filter(|q| q.is("query", ns::REGISTER));
            match (kind, query) {
                (Some(IqType::Get), Some(_)) => Ok(Some(self.form())),
                (Some(IqType::Set), Some(query)) => self.register(server, stream, query).await,
                _ => Err(iq::error(StanzaErrorCondition::BadRequest)),
            }
        })
    }
}

impl InBandRegistration {
    /// §3.1 the registration form, or §5 the redirection.
    fn form(&self) -> Element {
        let mut query = element("query", ns::REGISTER, &[]);
        match &self.settings.redirect_url {
            Some(url) => {
                query.append_child(text_element(
                    "instructions",
                    ns::REGISTER,
                    &format!("To register, visit {url}"),
                ));
                let mut x = element("x", OOB, &[]);
                x.append_child(text_element("url", OOB, url));
                query.append_child(x);
            }
            None => {
                query.append_child(text_element(
                    "instructions",
                    ns::REGISTER,
                    "Choose a username and password to register with this server.",
                ));
                query.append_child(element("username", ns::REGISTER, &[]));
                query.append_child(element("password", ns::REGISTER, &[]));
            }
        }
        query
    }

    async fn register(&self, server: &Server, stream: &StreamContext, query: &Element) -> IqResult {
        if let Some(url) = &self.settings.redirect_url {
            return Err(
                iq::error(StanzaErrorCondition::NotAllowed).with_text(format!("register at {url}"))
            );
        }
        if query.get_child("remove", ns::REGISTER).is_some() {
            return Err(iq::error(StanzaErrorCondition::NotAuthorized)
                .with_text("authenticate to remove an account"));
        }
        if !stream.secure {
            return Err(iq::error(StanzaErrorCondition::NotAcceptable)
                .with_text("registration requires an encrypted connection"));
        }
        let (Some(username), Some(password)) = (
            query.get_child("username", ns::REGISTER).map(Element::text),
            query.get_child("password", ns::REGISTER).map(Element::text),
        ) else {
            return Err(iq::error(StanzaErrorCondition::BadRequest)
                .with_text("username and password are required"));
        };
        let user = account_jid(&username, &stream.host)?;
        let node = user.node().unwrap_or_default();
        let config = server.config();
        let by_ip = AccessRequest {
            ip: Some(stream.ip),
            ..AccessRequest::default()
        };
        let by_user = AccessRequest {
            user: Some((node, user.domain())),
            ip: Some(stream.ip),
            ..AccessRequest::default()
        };
        if config.access(&self.settings.ip_access, &by_ip) == AccessDecision::Deny
            || config.access(&self.settings.access, &by_user) == AccessDecision::Deny
        {
            tracing::info!(ip = %stream.ip, %user, "registration denied by access rules");
            return Err(
                iq::error(StanzaErrorCondition::Forbidden).with_text("registration is not allowed")
            );
        }
        self.settings.check_password(&password)?;
        let timeout = config.registration_timeout;
        let reserved = if timeout.is_zero() {
            None
        } else {
            let now = Instant::now();
            self.lock_limiter()
                .try_reserve(stream.ip, now, timeout)
                .map_err(|wait| {
                    tracing::info!(ip = %stream.ip, "registration rate limited");
                    iq::error(StanzaErrorCondition::ResourceConstraint).with_text(format!(
                        "too many registrations from this address, retry in {} s",
                        wait.as_secs().max(1)
                    ))
                })?;
            Some(now)
        };
        let outcome = create(server, &user, password).await;
        match (&outcome, reserved) {
            (Ok(()), _) => tracing::info!(ip = %stream.ip, %user, "account registered"),
            (Err(_), Some(at)) => self.lock_limiter().release(stream.ip, at),
            (Err(_), None) => {}
        }
        outcome.map(|()| None)
    }

    fn lock_limiter(&self) -> std::sync::MutexGuard<'_, RegistrationLimiter> {
        // The map stays consistent even if a holder panicked: every operation is one insert
        // or remove.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Prepares a requested username into the account JID on `host`.
fn account_jid(username: &str, host: &str) -> Result<BareJid, StanzaError> {
    if username.is_empty() {
        return Err(iq::error(StanzaErrorCondition::NotAcceptable).with_text("empty username"));
    }
    let malformed =
        |_| iq::error(StanzaErrorCondition::JidMalformed).with_text("malformed username");
    let node = nodeprep(username).map_err(malformed)?;
    BareJid::new(Some(&node), host).map_err(malformed)
}

/// Derives the SCRAM keys on the blocking pool.
async fn credentials(password: String) -> Result<Credentials, StanzaError> {
    let derived = tokio::task::spawn_blocking(move || {
        Credentials::new(&password, Credentials::DEFAULT_ITERATIONS)
    })
    .await;
    match derived {
        Ok(Ok(creds)) => Ok(creds),
        // SASLprep refused the password (control characters and the like).
        Ok(Err(_)) => Err(iq::error(StanzaErrorCondition::NotAcceptable)
            .with_text("the password contains characters that are not allowed")),
        Err(e) => {
            tracing::error!(error = %e, "password derivation task failed");
            Err(iq::error(StanzaErrorCondition::InternalServerError))
        }
    }
}

async fn create(server: &Server, user: &BareJid, password: String) -> Result<(), StanzaError> {
    let creds = credentials(password).await?;
    match server.stores().create(user, &creds).await {
        Ok(()) => Ok(()),
        Err(StorageError::AlreadyExists) => Err(iq::error(StanzaErrorCondition::Conflict)
            .with_text("this username is already registered")),
        Err(e) => Err(iq::storage_failure("cannot create account", user, &e)),
    }
}

/// XEP-0077 for an authenticated account: status, password change, removal.
struct AccountRegistration {
    settings: Arc<Settings>,
}

impl IqHandler for AccountRegistration {
    fn handle<'a>(&'a self, server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let (kind, query) = iq::request(iq)?;
            if !query.is("query", ns::REGISTER) {
                return Err(iq::error(StanzaErrorCondition::BadRequest));
            }
            let user = requester(iq)?;
            match kind {
                IqType::Get => Ok(Some(registered(&user))),
                _ if query.get_child("remove", ns::REGISTER).is_some() => {
                    remove_account(server, &user).await
                }
                _ => self.change_password(server, &user, query).await,
            }
        })
    }
}

impl AccountRegistration {
    /// XEP-0077 §3.3.
    async fn change_password(&self, server: &Server, user: &BareJid, query: &Element) -> IqResult {
        let Some(password) = query.get_child("password", ns::REGISTER).map(Element::text) else {
            return Err(iq::error(StanzaErrorCondition::BadRequest)
                .with_text("username and password are required"));
        };
        // The username is redundant (the stream is authenticated) but, when given, it must
        // name this account: a mismatch is a client bug we should not paper over.
        if let Some(username) = query.get_child("username", ns::REGISTER).map(Element::text)
            && nodeprep(&username).ok().as_deref() != user.node()
        {
            return Err(iq::error(StanzaErrorCondition::BadRequest)
                .with_text("the username is not this account's"));
        }
        self.settings.check_password(&password)?;
        let creds = credentials(password).await?;
        match server.stores().set_credentials(user, &creds).await {
            Ok(()) => {
                tracing::info!(%user, "password changed");
                Ok(None)
            }
            Err(StorageError::NotFound) => Err(iq::error(StanzaErrorCondition::ItemNotFound)),
            Err(e) => Err(iq::storage_failure("cannot change password", user, &e)),
        }
    }
}

/// The account a post-authentication request acts on: the sender's own, and only for an IQ
/// addressed to that account or to its server.
fn requester(iq: &Stanza) -> Result<BareJid, StanzaError> {
    let user = iq.from().to_bare();
    let to = iq.to();
    let own = if to.node().is_some() {
        to.to_bare() == user
    } else {
        to.domain() == user.domain()
    };
    if user.node().is_none() || !own {
        return Err(iq::error(StanzaErrorCondition::Forbidden));
    }
    Ok(user)
}

/// §3.1 "already registered".
fn registered(user: &BareJid) -> Element {
    let mut query = element("query", ns::REGISTER, &[]);
    query.append_child(element("registered", ns::REGISTER, &[]));
    query.append_child(text_element(
        "username",
        ns::REGISTER,
        user.node().unwrap_or_default(),
    ));
    query
}

/// §3.2: the account goes, its contacts are told, its sessions are closed.
///
/// The result is routed by the caller after the close signal is set; the connection task
/// writes what is already in its inbox before closing, so the client still sees it.
async fn remove_account(server: &Server, user: &BareJid) -> IqResult {
    if let Err(e) = server.remove_user(user, "account removed").await {
        return Err(iq::storage_failure("cannot remove account", user, &e));
    }
    tracing::info!(%user, "account removed in-band");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use starling_config::OptionValue;
    use starling_storage::{RosterItem, Subscription};
    use starling_xmpp::error::StanzaErrorCondition as C;

    use super::*;
    use crate::fixture::{Fixture, error_condition, set_option};

    fn ctx(ip: &str) -> StreamContext {
        StreamContext {
            host: "localhost".to_owned(),
            ip: ip.parse().unwrap(),
            secure: true,
        }
    }

    fn form(username: &str, password: &str) -> String {
        format!(
            "<query xmlns='jabber:iq:register'><username>{username}</username>\
             <password>{password}</password></query>"
        )
    }

    async fn pre_auth(f: &Fixture, stream: &StreamContext, kind: &str, payload: &str) -> IqResult {
        let modules = f.server.host_modules("localhost").unwrap();
        let handler = modules.stream_iq_handler(ns::REGISTER).unwrap().clone();
        let mut el = element("iq", ns::CLIENT, &[("type", kind), ("id", "r1")]);
        el.append_child(payload.parse::<Element>().unwrap());
        handler.handle(&f.server, stream, &el).await
    }

    fn condition(result: IqResult) -> Option<C> {
        result.err().map(|e| e.condition)
    }

    async fn password_ok(f: &Fixture, jid: &str, password: &str) -> bool {
        let user = BareJid::parse(jid).unwrap();
        let creds = f.server.stores().credentials(&user).await.unwrap().unwrap();
        creds.verify_plain(password)
    }

    #[tokio::test]
    async fn get_returns_the_form_and_feature_is_advertised() {
        let f = Fixture::new().await;
        let modules = f.server.host_modules("localhost").unwrap();
        assert!(
            modules
                .registrations
                .pre_auth_features
                .contains(&("register", ns::REGISTER_FEATURE))
        );
        let q = pre_auth(
            &f,
            &ctx("192.0.2.1"),
            "get",
            "<query xmlns='jabber:iq:register'/>",
        )
        .await
        .unwrap()
        .unwrap();
        assert!(q.get_child("instructions", ns::REGISTER).is_some());
        assert!(q.get_child("username", ns::REGISTER).is_some());
        assert!(q.get_child("password", ns::REGISTER).is_some());
    }

    #[tokio::test]
    async fn register_creates_account_then_conflicts() {
        let f = Fixture::with(|c| c.registration_timeout = Duration::ZERO).await;
        let r = pre_auth(&f, &ctx("192.0.2.1"), "set", &form("Juliet", "s3cret!")).await;
        assert_eq!(r.unwrap(), None);
        // Stored under the prepared (case-folded) username.
        assert!(password_ok(&f, "juliet@localhost", "s3cret!").await);
        let r = pre_auth(&f, &ctx("192.0.2.2"), "set", &form("juliet", "other")).await;
        assert_eq!(condition(r), Some(C::Conflict));
        assert!(password_ok(&f, "juliet@localhost", "s3cret!").await);
    }

    #[tokio::test]
    async fn invalid_requests_are_refused() {
        let f = Fixture::with(|c| c.registration_timeout = Duration::ZERO).await;
        let ip = ctx("192.0.2.1");
        let r = pre_auth(&f, &ip, "set", &form("a@b", "pw")).await;
        assert_eq!(condition(r), Some(C::JidMalformed));
        let r = pre_auth(&f, &ip, "set", &form("", "pw")).await;
        assert_eq!(condition(r), Some(C::NotAcceptable));
        let r = pre_auth(&f, &ip, "set", &form("romeo", "")).await;
        assert_eq!(condition(r), Some(C::NotAcceptable));
        let r = pre_auth(
            &f,
            &ip,
            "set",
            "<query xmlns='jabber:iq:register'><username>romeo</username></query>",
        )
        .await;
        assert_eq!(condition(r), Some(C::BadRequest));
        let mut plain = ctx("192.0.2.1");
        plain.secure = false;
        let r = pre_auth(&f, &plain, "set", &form("romeo", "pw")).await;
        assert_eq!(condition(r), Some(C::NotAcceptable));
        let r = pre_auth(
            &f,
            &ip,
            "set",
            "<query xmlns='jabber:iq:register'><remove/></query>",
        )
        .await;
        assert_eq!(condition(r), Some(C::NotAuthorized));
        let romeo = BareJid::parse("romeo@localhost").unwrap();
        assert!(!f.server.stores().exists(&romeo).await.unwrap());
    }

    #[tokio::test]
    async fn access_rules_can_deny() {
        for key in ["access", "ip_access"] {
            let f = Fixture::with(|c| {
                set_option(c, "mod_register", key, OptionValue::String("none".into()));
            })
            .await;
            let r = pre_auth(&f, &ctx("192.0.2.1"), "set", &form("romeo", "pw")).await;
            assert_eq!(condition(r), Some(C::Forbidden), "{key}");
        }
    }

    #[tokio::test]
    async fn one_registration_per_address_per_timeout() {
        let f = Fixture::with(|c| c.registration_timeout = Duration::from_secs(600)).await;
        let r = pre_auth(&f, &ctx("192.0.2.1"), "set", &form("a1", "pw")).await;
        assert!(r.is_ok());
        let r = pre_auth(&f, &ctx("192.0.2.1"), "set", &form("a2", "pw")).await;
        let err = r.unwrap_err();
        assert_eq!(err.condition, C::ResourceConstraint);
        assert_eq!(err.type_, starling_xmpp::error::ErrorType::Wait);
        // Loopback is not exempt.
        assert!(
            pre_auth(&f, &ctx("127.0.0.1"), "set", &form("b1", "pw"))
                .await
                .is_ok()
        );
        let r = pre_auth(&f, &ctx("127.0.0.1"), "set", &form("b2", "pw")).await;
        assert_eq!(condition(r), Some(C::ResourceConstraint));
        // IPv6 counts per /64.
        assert!(
            pre_auth(&f, &ctx("2001:db8::1"), "set", &form("c1", "pw"))
                .await
                .is_ok()
        );
        let r = pre_auth(&f, &ctx("2001:db8::2"), "set", &form("c2", "pw")).await;
        assert_eq!(condition(r), Some(C::ResourceConstraint));
        assert!(
            pre_auth(&f, &ctx("2001:db8:0:1::1"), "set", &form("c3", "pw"))
                .await
                .is_ok()
        );
        // A failed registration does not use up the slot.
        let r = pre_auth(&f, &ctx("192.0.2.9"), "set", &form("a1", "pw")).await;
        assert_eq!(condition(r), Some(C::Conflict));
        assert!(
            pre_auth(&f, &ctx("192.0.2.9"), "set", &form("d1", "pw"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn zero_timeout_disables_the_limit() {
        let f = Fixture::with(|c| c.registration_timeout = Duration::ZERO).await;
        for name in ["x1", "x2", "x3"] {
            assert!(
                pre_auth(&f, &ctx("192.0.2.1"), "set", &form(name, "pw"))
                    .await
                    .is_ok()
            );
        }
    }

    #[test]
    fn limiter_expires_and_prunes() {
        let mut l = RegistrationLimiter::default();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert!(l.try_reserve(a, t0, minute).is_ok());
        assert_eq!(
            l.try_reserve(a, t0 + Duration::from_secs(20), minute),
            Err(Duration::from_secs(40))
        );
        assert!(
            l.try_reserve(b, t0 + Duration::from_secs(30), minute)
                .is_ok()
        );
        assert_eq!(l.len(), 2);
        // After a's window, reserving prunes a's entry while b's is still live.
        let later = t0 + Duration::from_secs(61);
        assert!(l.try_reserve(a, later, minute).is_ok());
        assert_eq!(l.len(), 2);
        let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
        assert!(
            l.try_reserve(c, t0 + Duration::from_secs(200), minute)
                .is_ok()
        );
        assert_eq!(l.len(), 1, "a and b expired");
        // Releasing only drops the reservation it made.
        l.release(c, t0);
        assert_eq!(l.len(), 1);
        l.release(c, t0 + Duration::from_secs(200));
        assert!(l.is_empty());
        // IPv4-mapped IPv6 is the IPv4 address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(l.try_reserve(a, t0, minute).is_ok());
        assert!(l.try_reserve(mapped, t0, minute).is_err());
    }

    #[test]
    fn entropy_estimate() {
        assert_eq!(password_entropy(""), 0.0);
        let lower = password_entropy("aaaa");
        assert!((lower - 4.0 * 26f64.log2()).abs() < 1e-9);
        let mixed = password_entropy("aA1!");
        assert!((mixed - 4.0 * 95f64.log2()).abs() < 1e-9);
        assert!(password_entropy("é") > password_entropy("e"));
    }

    #[tokio::test]
    async fn weak_passwords_are_refused_when_configured() {
        let f = Fixture::with(|c| {
            c.registration_timeout = Duration::ZERO;
            set_option(c, "mod_register", "password_strength", OptionValue::Int(40));
        })
        .await;
        let r = pre_auth(&f, &ctx("192.0.2.1"), "set", &form("romeo", "abcdef")).await;
        let err = r.unwrap_err();
        assert_eq!(err.condition, C::NotAcceptable);
        assert_eq!(err.text.as_deref(), Some("the password is too weak"));
        let r = pre_auth(
            &f,
            &ctx("192.0.2.1"),
            "set",
            &form("romeo", "Tr0ub4dor!3xy"),
        )
        .await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn redirect_url_replaces_in_band_registration() {
        let f = Fixture::with(|c| {
            set_option(
                c,
                "mod_register",
                "redirect_url",
                OptionValue::String("https://example.org/signup".into()),
            );
        })
        .await;
        let q = pre_auth(
            &f,
            &ctx("192.0.2.1"),
            "get",
            "<query xmlns='jabber:iq:register'/>",
        )
        .await
        .unwrap()
        .unwrap();
        let url = q
            .get_child("x", OOB)
            .unwrap()
            .get_child("url", OOB)
            .unwrap();
        assert_eq!(url.text(), "https://example.org/signup");
        assert!(q.get_child("username", ns::REGISTER).is_none());
        let r = pre_auth(&f, &ctx("192.0.2.1"), "set", &form("romeo", "pw")).await;
        assert_eq!(condition(r), Some(C::NotAllowed));
    }

    #[tokio::test]
    async fn authenticated_get_and_password_change() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s
            .iq("localhost", "get", "<query xmlns='jabber:iq:register'/>")
            .await;
        let q = reply.payload().unwrap();
        assert!(q.get_child("registered", ns::REGISTER).is_some());
        assert_eq!(
            q.get_child("username", ns::REGISTER).unwrap().text(),
            "alice"
        );
        // XEP-0077 §3.3 addresses the server.
        let reply = s.iq("localhost", "set", &form("alice", "n3w")).await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(password_ok(&f, "alice@localhost", "n3w").await);
        // ... and the bare JID works too.
        let reply = s
            .iq("alice@localhost", "set", &form("alice", "n3wer"))
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(password_ok(&f, "alice@localhost", "n3wer").await);
        // Someone else's username.
        let reply = s.iq("localhost", "set", &form("bob", "x")).await;
        assert_eq!(error_condition(&reply), Some(C::BadRequest));
        assert!(password_ok(&f, "alice@localhost", "n3wer").await);
    }

    #[tokio::test]
    async fn other_users_are_forbidden() {
        let f = Fixture::new().await;
        f.account("alice@localhost").await;
        f.account("bob@localhost").await;
        let mut bob = f.session("bob@localhost/b").await;
        let reply = bob
            .iq("alice@localhost", "set", &form("alice", "pwned"))
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        let reply = bob
            .iq(
                "alice@localhost",
                "set",
                "<query xmlns='jabber:iq:register'><remove/></query>",
            )
            .await;
        assert_eq!(error_condition(&reply), Some(C::Forbidden));
        assert!(password_ok(&f, "alice@localhost", "secret").await);
    }

    #[tokio::test]
    async fn remove_deletes_account_tells_contacts_and_closes_sessions() {
        let f = Fixture::new().await;
        let alice = f.account("alice@localhost").await;
        let bob = f.account("bob@localhost").await;
        // Mutual subscription.
        let mut item = RosterItem::new(bob.clone());
        item.subscription = Subscription::Both;
        f.server
            .stores()
            .put_item(&alice, &item, 100)
            .await
            .unwrap();
        let mut item = RosterItem::new(alice.clone());
        item.subscription = Subscription::Both;
        f.server.stores().put_item(&bob, &item, 100).await.unwrap();
        let mut bob_session = f.session("bob@localhost/b").await;
        bob_session.set_available();
        let mut s = f.session("alice@localhost/a").await;
        let other = f.session("alice@localhost/other").await;
        let reply = s
            .iq(
                "localhost",
                "set",
                "<query xmlns='jabber:iq:register'><remove/></query>",
            )
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert!(!f.server.stores().exists(&alice).await.unwrap());
        for ch in [&s.channels, &other.channels] {
            let err = ch.close.borrow().clone().unwrap();
            assert_eq!(
                err.condition,
                starling_xmpp::error::StreamErrorCondition::NotAuthorized
            );
        }
        // Bob's roster no longer has Alice's subscription in either direction.
        let kinds: Vec<String> = bob_session
            .drain()
            .iter()
            .filter(|s| s.kind() == starling_xmpp::stanza::Kind::Presence)
            .filter_map(|s| s.type_attr().map(str::to_owned))
            .collect();
        assert!(kinds.contains(&"unsubscribe".to_owned()), "{kinds:?}");
        assert!(kinds.contains(&"unsubscribed".to_owned()), "{kinds:?}");
        let item = f.server.stores().item(&bob, &alice).await.unwrap().unwrap();
        assert_eq!(item.subscription, Subscription::None);
    }
}
