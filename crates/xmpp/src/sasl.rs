//! SASL vocabulary shared by every mechanism: names, PLAIN, payload decoding and failures.
//!
//! Implements RFC 6120 §6.4 (base64 payloads, `=` for an empty response), §6.5 (failure
//! conditions and the `<failure/>` element) and RFC 4616 (PLAIN message syntax). SCRAM lives in
//! [`crate::scram`]; this module only names it. Nothing here looks up accounts: callers get the
//! parsed credentials and decide.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

use crate::ns;
use crate::scram::ScramHash;

/// RFC 4616 §2: each of authzid, authcid and passwd is at most 255 octets.
const PLAIN_FIELD_MAX: usize = 255;

/// Strict alphabet and trailing bits, but padding optional: some clients omit it and RFC 6120
/// gains nothing from refusing them.
const PAYLOAD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A SASL mechanism the server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-512 with channel binding.
    ScramSha512Plus,
    /// SCRAM-SHA-256 with channel binding (RFC 7677).
    ScramSha256Plus,
    /// SCRAM-SHA-1 with channel binding (RFC 5802).
    ScramSha1Plus,
    /// SCRAM-SHA-512 without channel binding.
    ScramSha512,
    /// SCRAM-SHA-256 without channel binding (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-1 without channel binding (RFC 5802).
    ScramSha1,
    /// PLAIN (RFC 4616); only sensible over TLS.
    Plain,
}

impl Mechanism {
    /// Preference order for advertising: PLUS first, stronger first, PLAIN last.
    pub const ALL: [Self; 7] = [
        Self::ScramSha512Plus,
        Self::ScramSha256Plus,
        Self::ScramSha1Plus,
        Self::ScramSha512,
        Self::ScramSha256,
        Self::ScramSha1,
        Self::Plain,
    ];

    /// The IANA-registered mechanism name, e.g. `"SCRAM-SHA-256-PLUS"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ScramSha512Plus => "SCRAM-SHA-512-PLUS",
            Self::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Self::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha1 => "SCRAM-SHA-1",
            Self::Plain => "PLAIN",
        }
    }

    /// Looks a mechanism up by its exact (upper-case) name, as sent in `<auth mechanism=''/>`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// For SCRAM mechanisms, the hash and whether channel binding is required.
    pub fn scram(self) -> Option<(ScramHash, bool)> {
        match self {
            Self::ScramSha512Plus => Some((ScramHash::Sha512, true)),
            Self::ScramSha256Plus => Some((ScramHash::Sha256, true)),
            Self::ScramSha1Plus => Some((ScramHash::Sha1, true)),
            Self::ScramSha512 => Some((ScramHash::Sha512, false)),
            Self::ScramSha256 => Some((ScramHash::Sha256, false)),
            Self::ScramSha1 => Some((ScramHash::Sha1, false)),
            Self::Plain => None,
        }
    }
}

/// The three fields of a PLAIN message, as sent (not yet prepared).
///
/// The caller applies [`crate::jid::nodeprep`] to `authcid` before looking the account up;
/// password preparation happens inside [`crate::scram::Credentials::verify_plain`].
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// Identity to act as, when different from the authentication identity.
    pub authzid: Option<String>,
    /// Authentication identity (the username).
    pub authcid: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for PlainCredentials {
    // Never print the password, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses an RFC 4616 message: `[authzid] NUL authcid NUL passwd`, UTF-8, each at most 255
/// bytes, authcid and passwd non-empty.
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut fields = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::MalformedRequest);
    };
    let field = |bytes: &[u8]| -> Result<String, SaslError> {
        if bytes.len() > PLAIN_FIELD_MAX {
            return Err(SaslError::MalformedRequest);
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::MalformedRequest)
    };
    let authzid = field(authzid)?;
    let authcid = field(authcid)?;
    let password = field(password)?;
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    Ok(PlainCredentials {
        authzid: (!authzid.is_empty()).then_some(authzid),
        authcid,
        password,
    })
}

/// Decodes the base64 text of an `<auth/>` or `<response/>` element (RFC 6120 §6.4.2).
///
/// Surrounding whitespace is trimmed; `=` (and empty text) decode to an empty payload. A caller
/// that must tell "no initial response" from "empty initial response" checks for empty text
/// before calling this.
pub fn decode_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text == "=" || text.is_empty() {
        return Ok(Vec::new());
    }
    PAYLOAD_BASE64
        .decode(text)
        .map_err(|_| SaslError::IncorrectEncoding)
}

/// Encodes a payload for `<challenge/>` or `<success/>`: `=` for an empty one (RFC 6120 §6.4.2).
pub fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        general_purpose::STANDARD.encode(data)
    }
}

/// RFC 6120 §6.5 SASL failure conditions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// The client sent `<abort/>`.
    #[error("authentication aborted")]
    Aborted,
    /// The account exists but is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// The credentials have expired.
    #[error("credentials expired")]
    CredentialsExpired,
    /// The mechanism may only be used over an encrypted stream.
    #[error("encryption required")]
    EncryptionRequired,
    /// The base64 data could not be decoded.
    #[error("incorrect base64 encoding")]
    IncorrectEncoding,
    /// The authorization identity is not allowed or not valid.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// The mechanism is not offered.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The message does not follow the mechanism's syntax.
    #[error("malformed request")]
    MalformedRequest,
    /// The mechanism is weaker than policy allows for this account.
    #[error("mechanism too weak")]
    MechanismTooWeak,
    /// Wrong credentials, unknown user, or a failed integrity check.
    #[error("not authorized")]
    NotAuthorized,
    /// A transient server-side problem; the client may retry.
    #[error("temporary authentication failure")]
    TemporaryAuthFailure,
}

impl SaslError {
    /// The RFC 6120 §6.5 condition element name, e.g. `"not-authorized"`.
    pub fn condition(&self) -> &'static str {
        match self {
            Self::Aborted => "aborted",
            Self::AccountDisabled => "account-disabled",
            Self::CredentialsExpired => "credentials-expired",
            Self::EncryptionRequired => "encryption-required",
            Self::IncorrectEncoding => "incorrect-encoding",
            Self::InvalidAuthzid => "invalid-authzid",
            Self::InvalidMechanism => "invalid-mechanism",
            Self::MalformedRequest => "malformed-request",
            Self::MechanismTooWeak => "mechanism-too-weak",
            Self::NotAuthorized => "not-authorized",
            Self::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// The `<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><CONDITION/>[<text/>]</failure>`
/// element (RFC 6120 §6.5), with `text` escaped.
pub fn failure_xml(err: &SaslError, text: Option<&str>) -> String {
    let mut out = String::with_capacity(96 + text.map_or(0, str::len));
    // Writing into a String cannot fail.
    let _ = write!(out, "<failure xmlns='{}'><{}/>", ns::SASL, err.condition());
    if let Some(text) = text {
        out.push_str("<text>");
        escape_xml_text(text, &mut out);
        out.push_str("</text>");
    }
    out.push_str("</failure>");
    out
}

/// Escapes character data for both text and attribute positions, dropping code points XML 1.0
/// forbids so the result is always well-formed.
fn escape_xml_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => {}
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::ScramSha256Plus.name(), "SCRAM-SHA-256-PLUS");
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert_eq!(Mechanism::Plain.scram(), None);
        assert_eq!(
            Mechanism::ScramSha1Plus.scram(),
            Some((ScramHash::Sha1, true))
        );
        assert_eq!(
            Mechanism::ScramSha512.scram(),
            Some((ScramHash::Sha512, false))
        );
    }

    #[test]
    fn advertising_order_puts_plus_and_strength_first() {
        let names: Vec<_> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "SCRAM-SHA-512-PLUS",
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-512",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN"
            ]
        );
    }

    #[test]
    fn plain_parses_rfc4616_examples() {
        let creds = parse_plain(b"\0tim\0tanstaaftanstaaf");
        assert_eq!(
            creds,
            Ok(PlainCredentials {
                authzid: None,
                authcid: "tim".to_owned(),
                password: "tanstaaftanstaaf".to_owned(),
            })
        );
        let creds = parse_plain(b"Ursel\0Kurt\0xipj3plmq");
        assert_eq!(creds.map(|c| c.authzid), Ok(Some("Ursel".to_owned())));
    }

    #[test]
    fn plain_rejects_bad_messages() {
        for msg in [
            &b""[..],
            b"tim",
            b"\0tim",
            b"\0\0pass",
            b"\0tim\0",
            b"\0tim\0pa\0ss",
            b"\0t\xffim\0pass",
        ] {
            assert_eq!(
                parse_plain(msg),
                Err(SaslError::MalformedRequest),
                "{msg:?}"
            );
        }
        let long = vec![b'a'; 256];
        let mut msg = b"\0".to_vec();
        msg.extend_from_slice(&long);
        msg.extend_from_slice(b"\0pass");
        assert_eq!(parse_plain(&msg), Err(SaslError::MalformedRequest));
        let ok = vec![b'a'; 255];
        let mut msg = b"\0user\0".to_vec();
        msg.extend_from_slice(&ok);
        assert!(parse_plain(&msg).is_ok());
    }

    #[test]
    fn plain_debug_hides_the_password() {
        let creds = parse_plain(b"\0tim\0secret").unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{creds:?}").contains("secret"));
    }

    #[test]
    fn payload_decoding() {
        assert_eq!(decode_payload("="), Ok(Vec::new()));
        assert_eq!(decode_payload(" \n= "), Ok(Vec::new()));
        assert_eq!(decode_payload(""), Ok(Vec::new()));
        assert_eq!(
            decode_payload("AHRpbQB0YW5zdGFhZg=="),
            Ok(b"\0tim\0tanstaaf".to_vec())
        );
        assert_eq!(
            decode_payload("AHRpbQB0YW5zdGFhZg"),
            Ok(b"\0tim\0tanstaaf".to_vec())
        );
        assert_eq!(decode_payload("\tAHRpbQ==\r\n"), Ok(b"\0tim".to_vec()));
        assert_eq!(
            decode_payload("AHR pbQ=="),
            Err(SaslError::IncorrectEncoding)
        );
        assert_eq!(decode_payload("!!!!"), Err(SaslError::IncorrectEncoding));
        assert_eq!(
            decode_payload("AHRpbQ-_"),
            Err(SaslError::IncorrectEncoding)
        );
        assert_eq!(encode_payload(b""), "=");
        assert_eq!(encode_payload(b"\0tim"), "AHRpbQ==");
    }

    #[test]
    fn conditions_and_failure_xml() {
        assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
        assert_eq!(
            SaslError::TemporaryAuthFailure.condition(),
            "temporary-auth-failure"
        );
        assert_eq!(
            failure_xml(&SaslError::Aborted, None),
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><aborted/></failure>"
        );
        assert_eq!(
            failure_xml(&SaslError::AccountDisabled, Some("Call <212> & 'ask'\u{1}")),
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><account-disabled/>\
             <text>Call &lt;212&gt; &amp; &apos;ask&apos;</text></failure>"
        );
    }
}
