//! Which stream features to offer at each step of negotiation (RFC 6120 §4.3.2, §5, §6, §7).

use starling_xmpp::ns;
use starling_xmpp::sasl::Mechanism;

/// Where the negotiation is when features are announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not encrypted yet, not authenticated.
    Plain,
    /// Encrypted, not authenticated.
    Secure,
    /// Authenticated: resource binding next.
    Authenticated,
}

/// The listener policy and connection facts the offer depends on.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    /// TLS can be negotiated on this listener.
    pub tls_available: bool,
    /// Nothing but STARTTLS is offered before encryption.
    pub starttls_required: bool,
    /// PLAIN may be used without TLS (config `allow_plain_without_tls`).
    pub plain_without_tls: bool,
    /// tls-exporter channel binding data exists for this connection.
    pub channel_binding: bool,
}

/// The SASL mechanisms offered in `phase`, strongest first.
pub fn mechanisms(phase: Phase, offer: &Offer) -> Vec<Mechanism> {
    let secure = phase == Phase::Secure;
    Mechanism::ALL
        .into_iter()
        .filter(|m| match m.scram() {
            Some((_, plus)) => !plus || (secure && offer.channel_binding),
            None => secure || offer.plain_without_tls,
        })
        .collect()
}

/// The `<stream:features/>` element, serialised, for `phase`. `extra` are module-provided
/// features for the phase (in-band registration before authentication, roster versioning after).
pub fn features_xml(phase: Phase, offer: &Offer, extra: &[(&str, &str)]) -> String {
    let mut out = String::from("<stream:features>");
    match phase {
        Phase::Plain if offer.tls_available => {
            out.push_str("<starttls xmlns='");
            out.push_str(ns::TLS);
            if offer.starttls_required {
                out.push_str("'><required/></starttls>");
                out.push_str("</stream:features>");
                return out;
            }
            out.push_str("'/>");
            push_mechanisms(&mut out, phase, offer);
            push_extra(&mut out, extra);
        }
        Phase::Plain | Phase::Secure => {
            push_mechanisms(&mut out, phase, offer);
            if phase == Phase::Secure && offer.channel_binding {
                // XEP-0440: tell the client which channel-binding types we support.
                out.push_str("<sasl-channel-binding xmlns='");
                out.push_str(ns::SASL_CB);
                out.push_str("'><channel-binding type='tls-exporter'/></sasl-channel-binding>");
            }
            push_extra(&mut out, extra);
        }
        Phase::Authenticated => {
            out.push_str("<bind xmlns='");
            out.push_str(ns::BIND);
            out.push_str("'/>");
            // RFC 6121 appendix E: advertised as optional for clients that still send it.
            out.push_str("<session xmlns='");
            out.push_str(ns::SESSION);
            out.push_str("'><optional/></session>");
            push_extra(&mut out, extra);
        }
    }
    out.push_str("</stream:features>");
    out
}

fn push_mechanisms(out: &mut String, phase: Phase, offer: &Offer) {
    let mechs = mechanisms(phase, offer);
    if mechs.is_empty() {
        return;
    }
    out.push_str("<mechanisms xmlns='");
    out.push_str(ns::SASL);
    out.push_str("'>");
    for m in mechs {
        out.push_str("<mechanism>");
        out.push_str(m.name());
        out.push_str("</mechanism>");
    }
    out.push_str("</mechanisms>");
}

fn push_extra(out: &mut String, extra: &[(&str, &str)]) {
    for (name, namespace) in extra {
        out.push('<');
        out.push_str(name);
        out.push_str(" xmlns='");
        out.push_str(namespace);
        out.push_str("'/>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            tls_available: true,
            starttls_required: true,
            plain_without_tls: false,
            channel_binding: true,
        }
    }

    #[test]
    fn only_starttls_while_required() {
        let xml = features_xml(Phase::Plain, &offer(), &[("register", "x")]);
        assert!(xml.contains("<required/>"));
        assert!(!xml.contains("mechanism"));
        assert!(!xml.contains("register"));
    }

    #[test]
    fn plain_only_over_tls_unless_allowed() {
        let mut o = offer();
        o.starttls_required = false;
        assert!(!mechanisms(Phase::Plain, &o).contains(&Mechanism::Plain));
        assert!(mechanisms(Phase::Secure, &o).contains(&Mechanism::Plain));
        o.plain_without_tls = true;
        assert!(mechanisms(Phase::Plain, &o).contains(&Mechanism::Plain));
    }

    #[test]
    fn plus_needs_channel_binding_and_comes_first() {
        let o = offer();
        let m = mechanisms(Phase::Secure, &o);
        assert_eq!(m.first(), Some(&Mechanism::ScramSha512Plus));
        let mut no_cb = offer();
        no_cb.channel_binding = false;
        assert!(
            mechanisms(Phase::Secure, &no_cb)
                .iter()
                .all(|m| m.scram().is_none_or(|(_, plus)| !plus))
        );
        let xml = features_xml(Phase::Secure, &o, &[]);
        assert!(xml.contains("tls-exporter"));
    }

    #[test]
    fn bind_after_authentication() {
        let xml = features_xml(Phase::Authenticated, &offer(), &[("ver", ns::ROSTER_VER)]);
        assert!(xml.contains(ns::BIND));
        assert!(xml.contains(ns::ROSTER_VER));
    }
}
