//! XEP-0115 entity capabilities, as far as PEP needs them: which nodes each session wants
//! notifications for (`NODE+notify` features, XEP-0163 §4.3).
//!
//! The server learns a session's `<c node ver hash/>` from its broadcast presence, resolves an
//! unknown `ver` by asking the session itself (`disco#info` on `NODE#VER`, §6.2), checks the
//! answer against the hash (§5.1 verification string, §5.4 validation; only `sha-1` is
//! verified, as every current client uses it), and caches verified feature lists by `ver` in a
//! bounded cache (oldest out first), so each `ver` is asked once. A session whose caps are
//! missing, unanswered, or do not verify gets no `+notify` notifications: a feature list that
//! does not hash to its `ver` cannot be trusted for other sessions, and guessing would flood
//! clients with events they never asked for.
//!
//! The state here is plain data behind short `std` mutex sections (never held across an
//! await); the module's hooks do the I/O. Requests still unanswered after [`QUERY_TIMEOUT`]
//! are forgotten, and at most [`MAX_PENDING`] are outstanding.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};
use starling_xmpp::Element;
use starling_xmpp::jid::FullJid;
use starling_xmpp::ns;
use starling_xmpp::stanza::element;

/// XEP-0115 namespace.
pub const CAPS: &str = "http://jabber.org/protocol/caps";
/// How long an unanswered caps query is remembered.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most caps queries outstanding per host.
pub const MAX_PENDING: usize = 10_000;

/// The XML namespace of `xml:lang`.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// A session's advertised capabilities (the `<c/>` element of its presence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// The software's URI.
    pub node: String,
    /// The verification hash (or, for legacy caps, an opaque version).
    pub ver: String,
    /// The hash function; `None` for legacy caps (pre-1.5), which cannot be verified.
    pub hash: Option<String>,
}

impl Caps {
    /// The `<c xmlns='http://jabber.org/protocol/caps'/>` of a presence, if it has a usable one.
    pub fn of_presence(presence: &Element) -> Option<Self> {
        let c = presence.get_child("c", CAPS)?;
        let node = c.attr("node").filter(|n| !n.is_empty())?;
        let ver = c.attr("ver").filter(|v| !v.is_empty())?;
        Some(Self {
            node: node.to_owned(),
            ver: ver.to_owned(),
            hash: c.attr("hash").map(str::to_owned),
        })
    }
}

/// Features of one verified `ver`, sorted for binary search.
pub type Features = Arc<[String]>;

/// What the caller should do after a presence.
#[derive(Debug)]
pub enum PresenceOutcome {
    /// Nothing (no caps, unavailable, or a query is already out).
    Nothing,
    /// Caps are known for this session now.
    Known,
    /// Send this disco#info request (from the host to the session) to learn them.
    Query(Element),
}

/// What an IQ answer turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// Not the answer to one of our queries: let it through.
    NotOurs,
    /// Ours, and the caps verified: `initial` is true if the session still awaits the items
    /// its initial presence should have brought.
    Verified {
        /// Whether the last published items are still owed to the session.
        initial: bool,
    },
    /// Ours, but an error or unverifiable: consumed, nothing learnt.
    Rejected,
}

#[derive(Clone, Debug)]
enum SessionCaps {
    /// No caps, or caps that could not be verified.
    Unknown,
    /// A query for `ver` is out; `initial` if it came with the session's initial presence.
    Resolving { ver: String, initial: bool },
    /// Verified features.
    Known(Features),
}

#[derive(Debug)]
struct Pending {
    session: FullJid,
    caps: Caps,
    sent: Instant,
}

/// Bounded `ver` → features cache; the oldest entry goes first.
#[derive(Debug, Default)]
struct Cache {
    by_ver: HashMap<String, Features>,
    order: VecDeque<String>,
}

impl Cache {
    fn get(&self, ver: &str) -> Option<Features> {
        self.by_ver.get(ver).cloned()
    }

    fn insert(&mut self, ver: String, features: Features, capacity: usize) {
        if self.by_ver.insert(ver.clone(), features).is_none() {
            self.order.push_back(ver);
        }
        while self.order.len() > capacity.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.by_ver.remove(&old);
            }
        }
    }
}

/// Entity capabilities of one host's sessions.
#[derive(Debug)]
pub struct EntityCaps {
    host: String,
    cache_size: usize,
    sessions: Mutex<HashMap<FullJid, SessionCaps>>,
    cache: Mutex<Cache>,
    pending: Mutex<HashMap<String, Pending>>,
    next_id: AtomicU64,
}

/// Locks a mutex; a poisoned one (a panic elsewhere mid-update) still holds consistent maps,
/// since every update here is a single insert or remove.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EntityCaps {
    /// Empty state for `host`, caching at most `cache_size` `ver`s.
    pub fn new(host: &str, cache_size: usize) -> Self {
        Self {
            host: host.to_owned(),
            cache_size,
            sessions: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache::default()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// A session broadcast `presence`; `initial` if it is its first available presence.
    pub fn on_presence(
        &self,
        session: &FullJid,
        presence: &Element,
        available: bool,
        initial: bool,
    ) -> PresenceOutcome {
        if !available {
            lock(&self.sessions).remove(session);
            return PresenceOutcome::Nothing;
        }
        let Some(caps) = Caps::of_presence(presence) else {
            lock(&self.sessions).insert(session.clone(), SessionCaps::Unknown);
            return PresenceOutcome::Nothing;
        };
        if let Some(features) = lock(&self.cache).get(&caps.ver) {
            lock(&self.sessions).insert(session.clone(), SessionCaps::Known(features));
            return PresenceOutcome::Known;
        }
        if caps.hash.as_deref() != Some("sha-1") {
            // Nothing we could verify the answer against: do not even ask.
            lock(&self.sessions).insert(session.clone(), SessionCaps::Unknown);
            return PresenceOutcome::Nothing;
        }
        {
            let mut sessions = lock(&self.sessions);
            if let Some(SessionCaps::Resolving { ver, initial: owed }) = sessions.get_mut(session)
                && *ver == caps.ver
            {
                // Same ver already asked: just remember whether items are owed.
                *owed |= initial;
                return PresenceOutcome::Nothing;
            }
            sessions.insert(
                session.clone(),
                SessionCaps::Resolving {
                    ver: caps.ver.clone(),
                    initial,
                },
            );
        }
        // Only the session asked may answer (checked in `on_answer`), so a guessable id
        // gives nobody else a way in.
        let id = format!("pepcaps{:x}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        {
            let mut pending = lock(&self.pending);
            pending.retain(|_, p| now.duration_since(p.sent) < QUERY_TIMEOUT);
            if pending.len() >= MAX_PENDING {
                drop(pending);
                lock(&self.sessions).insert(session.clone(), SessionCaps::Unknown);
                return PresenceOutcome::Nothing;
            }
            pending.insert(
                id.clone(),
                Pending {
                    session: session.clone(),
                    caps: caps.clone(),
                    sent: now,
                },
            );
        }
        let mut iq = element(
            "iq",
            ns::CLIENT,
            &[
                ("type", "get"),
                ("id", &id),
                ("from", &self.host),
                ("to", session.as_str()),
            ],
        );
        iq.append_child(element(
            "query",
            ns::DISCO_INFO,
            &[("node", &format!("{}#{}", caps.node, caps.ver))],
        ));
        PresenceOutcome::Query(iq)
    }

    /// An IQ result or error `iq` that `from` sent; consumes the answers to our queries.
    pub fn on_answer(&self, from: &FullJid, iq: &Element) -> AnswerOutcome {
        let Some(id) = iq.attr("id") else {
            return AnswerOutcome::NotOurs;
        };
        let pending = {
            let mut pending = lock(&self.pending);
            // Only the session asked may answer (no poisoning of the shared cache by others).
            if pending.get(id).is_none_or(|p| p.session != *from) {
                return AnswerOutcome::NotOurs;
            }
            pending.remove(id)
        };
        let Some(pending) = pending else {
            return AnswerOutcome::NotOurs;
        };
        let features = match iq.attr("type") {
            Some("result") => iq
                .get_child("query", ns::DISCO_INFO)
                .and_then(|q| verified_features(q, &pending.caps)),
            _ => None,
        };
        let mut sessions = lock(&self.sessions);
        let owed = match sessions.get(from) {
            Some(SessionCaps::Resolving { ver, initial }) if *ver == pending.caps.ver => *initial,
            // The session moved on (new ver, unavailable, closed): the answer is stale for it.
            _ => {
                drop(sessions);
                if let Some(features) = features {
                    lock(&self.cache).insert(pending.caps.ver, features, self.cache_size);
                }
                return AnswerOutcome::Rejected;
            }
        };
        match features {
            Some(features) => {
                sessions.insert(from.clone(), SessionCaps::Known(features.clone()));
                drop(sessions);
                lock(&self.cache).insert(pending.caps.ver, features, self.cache_size);
                AnswerOutcome::Verified { initial: owed }
            }
            None => {
                sessions.insert(from.clone(), SessionCaps::Unknown);
                AnswerOutcome::Rejected
            }
        }
    }

    /// True if `session`'s verified caps include `NODE+notify`.
    pub fn wants(&self, session: &FullJid, node: &str) -> bool {
        let features = match lock(&self.sessions).get(session) {
            Some(SessionCaps::Known(features)) => features.clone(),
            _ => return false,
        };
        let wanted = format!("{node}+notify");
        features.binary_search(&wanted).is_ok()
    }

    /// Every `NODE` whose `NODE+notify` the session's verified caps include.
    pub fn interests(&self, session: &FullJid) -> Vec<String> {
        match lock(&self.sessions).get(session) {
            Some(SessionCaps::Known(features)) => features
                .iter()
                .filter_map(|f| f.strip_suffix("+notify"))
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The session ended: forget it.
    pub fn session_closed(&self, session: &FullJid) {
        lock(&self.sessions).remove(session);
    }

    #[cfg(test)]
    fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// The features of a disco#info answer if its verification string hashes (SHA-1) to
/// `caps.ver` and it passes §5.4's validation; `None` otherwise.
pub fn verified_features(query: &Element, caps: &Caps) -> Option<Features> {
    if caps.hash.as_deref() != Some("sha-1") {
        return None;
    }
    if sha1_ver(query)? != caps.ver {
        return None;
    }
    let mut features: Vec<String> = query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect();
    features.sort_unstable();
    Some(features.into())
}

/// The `ver` a client with this disco#info result advertises with `hash='sha-1'`: the
/// Base64 SHA-1 of its verification string (XEP-0115 §5.1), or `None` if §5.4 rejects it.
pub fn sha1_ver(query: &Element) -> Option<String> {
    let s = verification_string(query)?;
    Some(base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes())))
}

/// The XEP-0115 §5.1 verification string of a disco#info result, or `None` when §5.4 says
/// the result must not be used (duplicate identities, features or form types, or a form whose
/// `FORM_TYPE` is not a hidden field).
pub fn verification_string(query: &Element) -> Option<String> {
    let mut identities: Vec<String> = query
        .children()
        .filter(|c| c.is("identity", ns::DISCO_INFO))
        .map(|c| {
            let lang = c
                .attrs()
                .iter()
                .find(|((ns, name), _)| ns.as_str() == XML_NS && name.as_str() == "lang")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            format!(
                "{}/{}/{}/{}",
                c.attr("category").unwrap_or(""),
                c.attr("type").unwrap_or(""),
                lang,
                c.attr("name").unwrap_or("")
            )
        })
        .collect();
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .map(|c| c.attr("var").unwrap_or(""))
        .collect();
    identities.sort_unstable();
    features.sort_unstable();
    if has_duplicates(&identities) || has_duplicates(&features) {
        return None;
    }
    let mut forms: Vec<(String, String)> = Vec::new();
    for form in query.children().filter(|c| c.is("x", ns::DATA_FORMS)) {
        let mut form_type: Option<String> = None;
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for field in form.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = field.attr("var").unwrap_or("");
            let mut values: Vec<String> = field
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            if var == "FORM_TYPE" {
                if field.attr("type") != Some("hidden") || form_type.is_some() {
                    return None;
                }
                form_type = values.pop();
                continue;
            }
            values.sort_unstable();
            fields.push((var.to_owned(), values));
        }
        // §5.4: a form without FORM_TYPE is ignored, not an error.
        let Some(form_type) = form_type else {
            continue;
        };
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut text = format!("{form_type}<");
        for (var, values) in fields {
            text.push_str(&var);
            text.push('<');
            for value in values {
                text.push_str(&value);
                text.push('<');
            }
        }
        forms.push((form_type, text));
    }
    forms.sort_by(|a, b| a.0.cmp(&b.0));
    if forms.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
        return None;
    }
    let mut s = String::new();
    for identity in identities {
        s.push_str(&identity);
        s.push('<');
    }
    for feature in features {
        s.push_str(feature);
        s.push('<');
    }
    for (_, text) in forms {
        s.push_str(&text);
    }
    Some(s)
}

fn has_duplicates<T: PartialEq>(sorted: &[T]) -> bool {
    sorted.windows(2).any(|w| matches!(w, [a, b] if a == b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2, the simple example.
    const SIMPLE: &str = "<query xmlns='http://jabber.org/protocol/disco#info' \
        node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
        <identity category='client' name='Exodus 0.9.1' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/></query>";

    /// XEP-0115 §5.3, the complex example (languages, a software-info form).
    const COMPLEX: &str = "<query xmlns='http://jabber.org/protocol/disco#info' \
        node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
        <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
        <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/>\
        <x xmlns='jabber:x:data' type='result'>\
        <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
        <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
        <field var='os'><value>Mac</value></field>\
        <field var='os_version'><value>10.5.1</value></field>\
        <field var='software'><value>Psi</value></field>\
        <field var='software_version'><value>0.11</value></field></x></query>";

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn caps(ver: &str) -> Caps {
        Caps {
            node: "http://example.org/client".into(),
            ver: ver.into(),
            hash: Some("sha-1".into()),
        }
    }

    fn full(s: &str) -> FullJid {
        FullJid::parse(s).unwrap()
    }

    #[test]
    fn verification_strings_of_the_xep_examples() {
        assert_eq!(
            verification_string(&parse(SIMPLE)).unwrap(),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<"
        );
        assert!(verified_features(&parse(SIMPLE), &caps("QgayPKawpkPSDYmwT/WM94uAlu0=")).is_some());
        assert_eq!(
            verification_string(&parse(COMPLEX)).unwrap(),
            "client/pc/el/Ψ 0.11<client/pc/en/Psi 0.11<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<urn:xmpp:dataforms:softwareinfo<\
             ip_version<ipv4<ipv6<os<Mac<os_version<10.5.1<software<Psi<\
             software_version<0.11<"
        );
        let features =
            verified_features(&parse(COMPLEX), &caps("q07IKJEyjvHSyhy//CH0CxmKi8w=")).unwrap();
        assert_eq!(features.len(), 4);
        // A wrong ver, or another hash function, does not verify.
        assert!(verified_features(&parse(COMPLEX), &caps("AAAA")).is_none());
        let mut md5 = caps("q07IKJEyjvHSyhy//CH0CxmKi8w=");
        md5.hash = Some("md5".into());
        assert!(verified_features(&parse(COMPLEX), &md5).is_none());
    }

    #[test]
    fn invalid_results_are_refused() {
        let duplicate_feature = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <feature var='a'/><feature var='a'/></query>";
        assert!(verification_string(&parse(duplicate_feature)).is_none());
        let visible_form_type = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE'><value>x</value>\
            </field></x></query>";
        assert!(verification_string(&parse(visible_form_type)).is_none());
        let twice = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>\
            <value>x</value></field></x><x xmlns='jabber:x:data' type='result'>\
            <field var='FORM_TYPE' type='hidden'><value>x</value></field></x></query>";
        assert!(verification_string(&parse(twice)).is_none());
    }

    /// A presence with caps whose answer is `SIMPLE` plus `+notify` features.
    fn notify_query() -> (Element, String) {
        let query = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' type='phone'/>\
             <feature var='urn:xmpp:avatar:metadata+notify'/>\
             <feature var='http://jabber.org/protocol/caps'/></query>",
        );
        let s = verification_string(&query).unwrap();
        let ver = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()));
        (query, ver)
    }

    fn presence(ver: &str) -> Element {
        parse(&format!(
            "<presence xmlns='jabber:client'><c xmlns='{CAPS}' hash='sha-1' \
             node='http://example.org/client' ver='{ver}'/></presence>"
        ))
    }

    fn answer(query: &Element, request: &Element) -> Element {
        let mut iq = element(
            "iq",
            ns::CLIENT,
            &[("type", "result"), ("id", request.attr("id").unwrap())],
        );
        iq.append_child(query.clone());
        iq
    }

    #[test]
    fn query_answer_cache_round_trip() {
        let caps = EntityCaps::new("localhost", 10);
        let (query, ver) = notify_query();
        let bob = full("bob@localhost/phone");
        let PresenceOutcome::Query(request) = caps.on_presence(&bob, &presence(&ver), true, true)
        else {
            panic!("expected a query");
        };
        assert_eq!(request.attr("to"), Some("bob@localhost/phone"));
        assert_eq!(request.attr("from"), Some("localhost"));
        let node = request
            .get_child("query", ns::DISCO_INFO)
            .and_then(|q| q.attr("node"));
        assert_eq!(
            node,
            Some(format!("http://example.org/client#{ver}").as_str())
        );
        assert!(!caps.wants(&bob, "urn:xmpp:avatar:metadata"));
        // Someone else answering is not taken.
        let mallory = full("mallory@localhost/x");
        assert_eq!(
            caps.on_answer(&mallory, &answer(&query, &request)),
            AnswerOutcome::NotOurs
        );
        assert_eq!(
            caps.on_answer(&bob, &answer(&query, &request)),
            AnswerOutcome::Verified { initial: true }
        );
        assert!(caps.wants(&bob, "urn:xmpp:avatar:metadata"));
        assert!(!caps.wants(&bob, "urn:xmpp:bookmarks:1"));
        assert_eq!(caps.interests(&bob), vec!["urn:xmpp:avatar:metadata"]);
        assert_eq!(caps.pending_len(), 0);
        // A second session with the same ver is known at once, from the cache.
        let carol = full("carol@localhost/pc");
        assert!(matches!(
            caps.on_presence(&carol, &presence(&ver), true, true),
            PresenceOutcome::Known
        ));
        assert!(caps.wants(&carol, "urn:xmpp:avatar:metadata"));
        // Unavailable and closed sessions are forgotten.
        caps.on_presence(&carol, &presence(&ver), false, false);
        assert!(!caps.wants(&carol, "urn:xmpp:avatar:metadata"));
        caps.session_closed(&bob);
        assert!(!caps.wants(&bob, "urn:xmpp:avatar:metadata"));
    }

    #[test]
    fn unverifiable_caps_give_nothing() {
        let caps = EntityCaps::new("localhost", 10);
        let (query, _) = notify_query();
        let bob = full("bob@localhost/phone");
        // A ver the answer does not hash to.
        let PresenceOutcome::Query(request) =
            caps.on_presence(&bob, &presence("bm90IHRoZSBoYXNo"), true, true)
        else {
            panic!("expected a query");
        };
        assert_eq!(
            caps.on_answer(&bob, &answer(&query, &request)),
            AnswerOutcome::Rejected
        );
        assert!(!caps.wants(&bob, "urn:xmpp:avatar:metadata"));
        // Legacy caps (no hash) are not even asked about; no caps at all neither.
        let legacy = parse(&format!(
            "<presence xmlns='jabber:client'><c xmlns='{CAPS}' node='n' ver='1.0'/></presence>"
        ));
        assert!(matches!(
            caps.on_presence(&bob, &legacy, true, false),
            PresenceOutcome::Nothing
        ));
        assert!(matches!(
            caps.on_presence(
                &bob,
                &parse("<presence xmlns='jabber:client'/>"),
                true,
                false
            ),
            PresenceOutcome::Nothing
        ));
        assert_eq!(caps.pending_len(), 0);
    }

    #[test]
    fn cache_is_bounded_oldest_out() {
        let mut cache = Cache::default();
        for ver in ["a", "b", "c"] {
            cache.insert(ver.into(), Arc::from(Vec::new()), 2);
        }
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        assert!(cache.get("c").is_some());
        // Re-inserting a present ver does not grow the order list.
        cache.insert("c".into(), Arc::from(Vec::new()), 2);
        assert_eq!(cache.order.len(), 2);
    }
}
