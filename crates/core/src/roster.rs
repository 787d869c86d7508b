//! Roster items on the wire and the subscription state machine of RFC 6121 §3 and Appendix A.
//!
//! The state machine is pure: given the stored item (if any) and a subscription stanza's type,
//! [`outbound`] and [`inbound`] return what to store, whether to route or deliver the stanza,
//! and which side effects (roster push, automatic reply, presence) follow. The I/O (storage,
//! routing) is done by [`crate::presence`], so every row of the RFC's tables is a unit test.
//!
//! As in ejabberd, an item that exists only because a contact asked to subscribe
//! (subscription `none`, no pending-out, pending-in) is kept out of roster results: it is a
//! request, not a contact, until the user answers it.

use starling_storage::{RosterItem, Subscription};
use starling_xmpp::Element;
use starling_xmpp::jid::BareJid;
use starling_xmpp::ns;
use starling_xmpp::stanza::{PresenceType, element, set_attr, text_element};

/// What a subscription stanza does.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The item to store, if it changed.
    pub store: Option<RosterItem>,
    /// Route (outbound) or deliver to the user's available resources (inbound).
    pub forward: bool,
    /// Answer the sender with this presence type on the user's behalf (inbound only).
    pub auto_reply: Option<PresenceType>,
    /// Send the user's current presence to the contact (subscription granted).
    pub send_presence: bool,
    /// Send unavailable presence from the user's resources to the contact (subscription
    /// cancelled).
    pub send_unavailable: bool,
}

fn has_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}

fn has_to(s: Subscription) -> bool {
    matches!(s, Subscription::To | Subscription::Both)
}

fn with_from(s: Subscription, on: bool) -> Subscription {
    match (s, on) {
        (Subscription::None, true) => Subscription::From,
        (Subscription::To, true) => Subscription::Both,
        (Subscription::From, false) => Subscription::None,
        (Subscription::Both, false) => Subscription::To,
        (s, _) => s,
    }
}

fn with_to(s: Subscription, on: bool) -> Subscription {
    match (s, on) {
        (Subscription::None, true) => Subscription::To,
        (Subscription::From, true) => Subscription::Both,
        (Subscription::To, false) => Subscription::None,
        (Subscription::Both, false) => Subscription::From,
        (s, _) => s,
    }
}

fn new_item(contact: &BareJid) -> RosterItem {
    RosterItem {
        jid: contact.clone(),
        name: None,
        subscription: Subscription::None,
        ask_out: false,
        pending_in: None,
        approved: false,
        groups: Vec::new(),
    }
}

fn changed(old: Option<&RosterItem>, new: RosterItem) -> Option<RosterItem> {
    (old != Some(&new)).then_some(new)
}

/// The user sends a subscription stanza of type `kind` to `contact` (RFC 6121 §3.1.2, §3.2.2,
/// §3.3.2, §3.4; Appendix A.2 and A.4 "outbound").
pub fn outbound(item: Option<&RosterItem>, contact: &BareJid, kind: PresenceType) -> Outcome {
    let mut it = item.cloned().unwrap_or_else(|| new_item(contact));
    match kind {
        PresenceType::Subscribe => {
            if !has_to(it.subscription) {
                it.ask_out = true;
            }
            Outcome {
                store: changed(item, it),
                forward: true,
                ..Outcome::default()
            }
        }
        PresenceType::Subscribed => {
            if has_from(it.subscription) {
                return Outcome::default();
            }
            if it.pending_in.is_none() {
                // §3.4: no request to approve: record a pre-approval, do not route.
                it.approved = true;
                return Outcome {
                    store: changed(item, it),
                    ..Outcome::default()
                };
            }
            it.pending_in = None;
            it.approved = false;
            it.subscription = with_from(it.subscription, true);
            Outcome {
                store: changed(item, it),
                forward: true,
                send_presence: true,
                ..Outcome::default()
            }
        }
        PresenceType::Unsubscribe => {
            it.ask_out = false;
            it.subscription = with_to(it.subscription, false);
            Outcome {
                store: if item.is_some() {
                    changed(item, it)
                } else {
                    None
                },
                forward: true,
                ..Outcome::default()
            }
        }
        PresenceType::Unsubscribed => {
            let had_from = has_from(it.subscription);
            let was_pending = it.pending_in.is_some() || it.approved;
            if !had_from && !was_pending {
                return Outcome::default();
            }
            it.pending_in = None;
            it.approved = false;
            it.subscription = with_from(it.subscription, false);
            Outcome {
                store: changed(item, it),
                forward: true,
                send_unavailable: had_from,
                ..Outcome::default()
            }
        }
        _ => Outcome::default(),
    }
}

/// A subscription stanza of type `kind` from `contact` reaches the user (RFC 6121 §3.1.3,
/// §3.2.3, §3.3.3; Appendix A.3 "inbound"). `request_xml` is the serialised stanza, kept for a
/// pending subscription request so it can be delivered again at the next login.
pub fn inbound(
    item: Option<&RosterItem>,
    contact: &BareJid,
    kind: PresenceType,
    request_xml: &str,
) -> Outcome {
    let mut it = item.cloned().unwrap_or_else(|| new_item(contact));
    match kind {
        PresenceType::Subscribe => {
            if has_from(it.subscription) {
                return Outcome {
                    auto_reply: Some(PresenceType::Subscribed),
                    ..Outcome::default()
                };
            }
            if it.approved {
                it.approved = false;
                it.pending_in = None;
                it.subscription = with_from(it.subscription, true);
                return Outcome {
                    store: changed(item, it),
                    auto_reply: Some(PresenceType::Subscribed),
                    send_presence: true,
                    ..Outcome::default()
                };
            }
            it.pending_in = Some(request_xml.to_owned());
            Outcome {
                store: changed(item, it),
                forward: true,
                ..Outcome::default()
            }
        }
        PresenceType::Subscribed => {
            if !it.ask_out {
                return Outcome::default();
            }
            it.ask_out = false;
            it.subscription = with_to(it.subscription, true);
            Outcome {
                store: changed(item, it),
                forward: true,
                ..Outcome::default()
            }
        }
        PresenceType::Unsubscribe => {
            if !has_from(it.subscription) && it.pending_in.is_none() {
                return Outcome::default();
            }
            let had_from = has_from(it.subscription);
            it.pending_in = None;
            it.subscription = with_from(it.subscription, false);
            Outcome {
                store: changed(item, it),
                forward: true,
                send_unavailable: had_from,
                ..Outcome::default()
            }
        }
        PresenceType::Unsubscribed => {
            if !has_to(it.subscription) && !it.ask_out {
                return Outcome::default();
            }
            it.ask_out = false;
            it.subscription = with_to(it.subscription, false);
            Outcome {
                store: changed(item, it),
                forward: true,
                ..Outcome::default()
            }
        }
        _ => Outcome::default(),
    }
}

/// True if the item is a roster contact rather than only a pending request.
pub fn is_visible(item: &RosterItem) -> bool {
    !(item.subscription == Subscription::None && !item.ask_out && item.pending_in.is_some())
}

/// True if the contact receives the user's presence.
pub fn is_subscriber(item: &RosterItem) -> bool {
    has_from(item.subscription)
}

/// True if the user receives the contact's presence.
pub fn is_subscribed_to(item: &RosterItem) -> bool {
    has_to(item.subscription)
}

/// The wire name of a subscription state.
pub fn subscription_name(s: Subscription) -> &'static str {
    match s {
        Subscription::None => "none",
        Subscription::To => "to",
        Subscription::From => "from",
        Subscription::Both => "both",
        Subscription::Remove => "remove",
    }
}

/// `<item jid=.. name=.. subscription=.. [ask='subscribe'] [approved='true']><group/>..</item>`
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = element(
        "item",
        ns::ROSTER,
        &[
            ("jid", item.jid.as_str()),
            ("subscription", subscription_name(item.subscription)),
        ],
    );
    if let Some(name) = &item.name {
        set_attr(&mut el, "name", name.as_str());
    }
    if item.ask_out {
        set_attr(&mut el, "ask", "subscribe");
    }
    if item.approved {
        set_attr(&mut el, "approved", "true");
    }
    for group in &item.groups {
        el.append_child(text_element("group", ns::ROSTER, group));
    }
    el
}

/// `<query xmlns='jabber:iq:roster' [ver=..]>` with the given items.
pub fn query_element<'a>(
    items: impl IntoIterator<Item = &'a RosterItem>,
    ver: Option<&str>,
) -> Element {
    let mut query = element("query", ns::ROSTER, &[]);
    if let Some(ver) = ver {
        set_attr(&mut query, "ver", ver);
    }
    for item in items {
        query.append_child(item_element(item));
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> BareJid {
        BareJid::parse("c@example.net").unwrap()
    }

    fn item(sub: Subscription, ask_out: bool, pending: bool) -> RosterItem {
        RosterItem {
            jid: contact(),
            name: None,
            subscription: sub,
            ask_out,
            pending_in: pending.then(|| "<presence type='subscribe'/>".to_owned()),
            approved: false,
            groups: vec![],
        }
    }

    #[test]
    fn outbound_subscribe_sets_pending_out_and_routes() {
        let o = outbound(None, &contact(), PresenceType::Subscribe);
        assert!(o.forward);
        let stored = o.store.unwrap();
        assert_eq!(stored.subscription, Subscription::None);
        assert!(stored.ask_out);
        // Already subscribed: routed, no state change.
        let both = item(Subscription::Both, false, false);
        let o = outbound(Some(&both), &contact(), PresenceType::Subscribe);
        assert!(o.forward);
        assert!(o.store.is_none());
    }

    #[test]
    fn outbound_subscribed_approves_pending_request() {
        let pending = item(Subscription::None, false, true);
        let o = outbound(Some(&pending), &contact(), PresenceType::Subscribed);
        assert!(o.forward && o.send_presence);
        let s = o.store.unwrap();
        assert_eq!(s.subscription, Subscription::From);
        assert!(s.pending_in.is_none());
        let to_pending = item(Subscription::To, false, true);
        let o = outbound(Some(&to_pending), &contact(), PresenceType::Subscribed);
        assert_eq!(o.store.unwrap().subscription, Subscription::Both);
    }

    #[test]
    fn outbound_subscribed_without_request_is_a_preapproval() {
        let o = outbound(None, &contact(), PresenceType::Subscribed);
        assert!(!o.forward);
        assert!(o.store.unwrap().approved);
        // ... which the next inbound subscribe consumes with an automatic reply.
        let approved = outbound(None, &contact(), PresenceType::Subscribed)
            .store
            .unwrap();
        let o = inbound(Some(&approved), &contact(), PresenceType::Subscribe, "x");
        assert_eq!(o.auto_reply, Some(PresenceType::Subscribed));
        assert!(!o.forward);
        let s = o.store.unwrap();
        assert_eq!(s.subscription, Subscription::From);
        assert!(!s.approved);
    }

    #[test]
    fn outbound_subscribed_when_already_from_is_ignored() {
        let from = item(Subscription::From, false, false);
        assert_eq!(
            outbound(Some(&from), &contact(), PresenceType::Subscribed),
            Outcome::default()
        );
    }

    #[test]
    fn outbound_unsubscribe_and_unsubscribed() {
        let both = item(Subscription::Both, false, false);
        let o = outbound(Some(&both), &contact(), PresenceType::Unsubscribe);
        assert!(o.forward);
        assert_eq!(o.store.unwrap().subscription, Subscription::From);
        let o = outbound(Some(&both), &contact(), PresenceType::Unsubscribed);
        assert!(o.forward && o.send_unavailable);
        assert_eq!(o.store.unwrap().subscription, Subscription::To);
        // Denying a pending request.
        let pending = item(Subscription::None, false, true);
        let o = outbound(Some(&pending), &contact(), PresenceType::Unsubscribed);
        assert!(o.forward && !o.send_unavailable);
        assert!(o.store.unwrap().pending_in.is_none());
        // Nothing to cancel: not routed.
        let none = item(Subscription::None, false, false);
        assert!(!outbound(Some(&none), &contact(), PresenceType::Unsubscribed).forward);
    }

    #[test]
    fn inbound_subscribe_is_stored_and_delivered() {
        let o = inbound(None, &contact(), PresenceType::Subscribe, "<p/>");
        assert!(o.forward);
        let s = o.store.unwrap();
        assert_eq!(s.pending_in.as_deref(), Some("<p/>"));
        assert!(!is_visible(&s), "a bare request is not a roster contact");
        // Contact already has a subscription: auto-reply, no delivery.
        let from = item(Subscription::From, false, false);
        let o = inbound(Some(&from), &contact(), PresenceType::Subscribe, "<p/>");
        assert_eq!(o.auto_reply, Some(PresenceType::Subscribed));
        assert!(!o.forward && o.store.is_none());
    }

    #[test]
    fn inbound_subscribed_only_when_pending_out() {
        let none = item(Subscription::None, false, false);
        assert_eq!(
            inbound(Some(&none), &contact(), PresenceType::Subscribed, ""),
            Outcome::default()
        );
        let asked = item(Subscription::From, true, false);
        let o = inbound(Some(&asked), &contact(), PresenceType::Subscribed, "");
        assert!(o.forward);
        let s = o.store.unwrap();
        assert_eq!(s.subscription, Subscription::Both);
        assert!(!s.ask_out);
    }

    #[test]
    fn inbound_unsubscribe_and_unsubscribed() {
        let both = item(Subscription::Both, false, false);
        let o = inbound(Some(&both), &contact(), PresenceType::Unsubscribe, "");
        assert!(o.forward);
        assert_eq!(o.store.unwrap().subscription, Subscription::To);
        let o = inbound(Some(&both), &contact(), PresenceType::Unsubscribed, "");
        assert!(o.forward);
        assert_eq!(o.store.unwrap().subscription, Subscription::From);
        // A denial of our pending request.
        let asked = item(Subscription::None, true, false);
        let o = inbound(Some(&asked), &contact(), PresenceType::Unsubscribed, "");
        assert!(!o.store.unwrap().ask_out);
        // Nothing to cancel: not delivered.
        let none = item(Subscription::None, false, false);
        assert!(!inbound(Some(&none), &contact(), PresenceType::Unsubscribed, "").forward);
        assert!(!inbound(Some(&none), &contact(), PresenceType::Unsubscribe, "").forward);
    }

    #[test]
    fn item_element_carries_state() {
        let mut it = item(Subscription::None, true, false);
        it.name = Some("Cee".into());
        it.groups = vec!["Friends".into()];
        let el = item_element(&it);
        assert_eq!(el.attr("jid"), Some("c@example.net"));
        assert_eq!(el.attr("subscription"), Some("none"));
        assert_eq!(el.attr("ask"), Some("subscribe"));
        assert_eq!(el.attr("name"), Some("Cee"));
        assert_eq!(
            el.get_child("group", ns::ROSTER).map(|g| g.text()),
            Some("Friends".to_owned())
        );
    }
}
