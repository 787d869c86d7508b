//! Sans-I/O SCRAM server: stored keys, and the exchange as a typed state machine.
//!
//! Implements RFC 5802 (SCRAM-SHA-1 and the GS2 header, §5–§7), RFC 7677 (SCRAM-SHA-256) and
//! SCRAM-SHA-512 (same algorithm, SHA-512), with channel binding `tls-exporter` (RFC 9266) and
//! `tls-server-end-point` (RFC 5929). Passwords are prepared with PRECIS `OpaqueString`
//! (RFC 8265, which replaces SASLprep).
//!
//! The exchange is `start` → [`ScramStart`] → `respond` → [`ScramAwaitFinal`] → `finish`; each
//! step consumes the previous state, so a message can only be processed once and in order. The
//! caller does the I/O in between: it fetches the account's [`ScramKeys`] after `start` (by
//! [`ScramStart::username`], after `nodeprep`), and base64-wraps the returned messages.
//!
//! Only stored keys are ever needed here: PBKDF2 runs when a password is set (or for PLAIN), never
//! during a SCRAM login, so the work per login is a few HMACs. Unknown users get a deterministic
//! fake salt and fail at the very end, so whether an account exists does not leak.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{EagerHash, Hmac, KeyInit, Mac};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::sasl::SaslError;

/// Salt length for newly created credentials (RFC 5802 leaves it open; 128 bits is customary).
const SALT_LEN: usize = 16;
/// Random bytes in a server nonce; 18 bytes make 24 base64 characters without padding.
const NONCE_BYTES: usize = 18;

/// The hash function a SCRAM variant is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SHA-1 (RFC 5802).
    Sha1,
    /// SHA-256 (RFC 7677).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl ScramHash {
    /// All supported hashes, strongest first.
    pub const ALL: [Self; 3] = [Self::Sha512, Self::Sha256, Self::Sha1];

    /// The hash name as used in mechanism names and storage, e.g. `"SHA-256"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA-1",
            Self::Sha256 => "SHA-256",
            Self::Sha512 => "SHA-512",
        }
    }

    /// The hash a storage or mechanism name designates (`"SHA-256"`), case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
    }

    /// Output length in bytes; also the length of stored keys, proofs and signatures.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Sha1 => hmac_with::<Sha1>(key, parts),
            Self::Sha256 => hmac_with::<Sha256>(key, parts),
            Self::Sha512 => hmac_with::<Sha512>(key, parts),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => Sha1::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// RFC 5802 `Hi()`: PBKDF2 with HMAC, output as long as the hash.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.output_len()];
        match self {
            Self::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

fn hmac_with<D: EagerHash>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this never fails; an empty result would only make
    // every later comparison fail, which is the safe direction.
    let Ok(mut mac) = <Hmac<D> as KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// What is stored per account and hash: never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    /// The hash these keys were derived with.
    pub hash: ScramHash,
    /// The salt sent to clients.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count sent to clients.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`: verifies a client proof.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server-final-message.
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    /// Derives the keys from a password (prepared with `OpaqueString` first).
    ///
    /// Fails with `MalformedRequest` when the password is not a valid `OpaqueString` (e.g. empty
    /// or containing control characters), and with `TemporaryAuthFailure` for unusable server
    /// parameters (zero iterations or an empty salt).
    pub fn derive(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, SaslError> {
        if iterations == 0 || salt.is_empty() {
            return Err(SaslError::TemporaryAuthFailure);
        }
        let password = OpaqueString::enforce(password).map_err(|_| SaslError::MalformedRequest)?;
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        Ok(Self {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.digest(&client_key),
            server_key: hash.hmac(&salted, &[b"Server Key"]),
        })
    }

    /// Checks a plaintext password against these keys (runs PBKDF2; compares in constant time).
    pub fn verify_password(&self, password: &str) -> bool {
        let Ok(candidate) = Self::derive(self.hash, password, &self.salt, self.iterations) else {
            return false;
        };
        let stored = candidate.stored_key.ct_eq(&self.stored_key);
        let server = candidate.server_key.ct_eq(&self.server_key);
        (stored & server).into()
    }
}

/// The SCRAM keys of an account, one set per hash; what account storage keeps.
///
/// Accounts created here have all three. Accounts imported from another server (XEP-0227)
/// may have only the hashes that server kept (SCRAM-SHA-1 for Prosody, SCRAM-SHA-256 for a
/// default ejabberd); the missing ones are filled in at the next PLAIN login, when the
/// password is known ([`Self::is_complete`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    sha1: Option<ScramKeys>,
    sha256: Option<ScramKeys>,
    sha512: Option<ScramKeys>,
}

impl Credentials {
    /// The iteration count RFC 7677 recommends as a minimum, and ejabberd's default.
    pub const DEFAULT_ITERATIONS: u32 = 4096;

    /// Derives keys for every hash from a password, each with its own random 16-byte salt.
    /// Runs PBKDF2 three times: call it from a blocking pool.
    pub fn new(password: &str, iterations: u32) -> Result<Self, SaslError> {
        let derive =
            |hash| ScramKeys::derive(hash, password, &random_bytes::<SALT_LEN>(), iterations);
        Ok(Self {
            sha1: Some(derive(ScramHash::Sha1)?),
            sha256: Some(derive(ScramHash::Sha256)?),
            sha512: Some(derive(ScramHash::Sha512)?),
        })
    }

    /// Credentials from stored or imported keys; `None` if there are none. A later key for
    /// the same hash replaces an earlier one.
    pub fn from_keys(keys: impl IntoIterator<Item = ScramKeys>) -> Option<Self> {
        let mut out = Self {
            sha1: None,
            sha256: None,
            sha512: None,
        };
        for k in keys {
            let slot = match k.hash {
                ScramHash::Sha1 => &mut out.sha1,
                ScramHash::Sha256 => &mut out.sha256,
                ScramHash::Sha512 => &mut out.sha512,
            };
            *slot = Some(k);
        }
        let any = out.sha1.is_some() || out.sha256.is_some() || out.sha512.is_some();
        any.then_some(out)
    }

    /// The keys for one hash, if this account has them.
    pub fn keys(&self, hash: ScramHash) -> Option<&ScramKeys> {
        match hash {
            ScramHash::Sha1 => self.sha1.as_ref(),
            ScramHash::Sha256 => self.sha256.as_ref(),
            ScramHash::Sha512 => self.sha512.as_ref(),
        }
    }

    /// Every key set present, SHA-1 first.
    pub fn iter(&self) -> impl Iterator<Item = &ScramKeys> {
        [&self.sha1, &self.sha256, &self.sha512]
            .into_iter()
            .filter_map(Option::as_ref)
    }

    /// True when keys exist for every hash (false for some imported accounts).
    pub fn is_complete(&self) -> bool {
        self.sha1.is_some() && self.sha256.is_some() && self.sha512.is_some()
    }

    /// Checks a PLAIN password with the strongest keys present (SHA-256 when there).
    pub fn verify_plain(&self, password: &str) -> bool {
        self.sha256
            .as_ref()
            .or(self.sha512.as_ref())
            .or(self.sha1.as_ref())
            .is_some_and(|k| k.verify_password(password))
    }
}

/// Channel-binding data the server has for this connection (None when not on TLS).
#[derive(Clone, Debug, Default)]
pub struct ChannelBindings {
    /// RFC 9266 `tls-exporter` data (TLS 1.3, and TLS 1.2 with extended master secret).
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929 `tls-server-end-point` data: the hash of the server certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

/// A fresh server nonce: 24 printable characters from a CSPRNG.
pub fn random_nonce() -> String {
    STANDARD.encode(random_bytes::<NONCE_BYTES>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    bytes
}

/// Step 1: parses the client-first-message (RFC 5802 §7).
///
/// `plus` says the mechanism chosen was a -PLUS one; `plus_offered` says the server advertised
/// -PLUS mechanisms, which turns a `y` flag into a detected downgrade (RFC 5802 §6).
pub fn start(
    hash: ScramHash,
    plus: bool,
    plus_offered: bool,
    client_first: &[u8],
    cb: &ChannelBindings,
) -> Result<ScramStart, SaslError> {
    let msg = std::str::from_utf8(client_first).map_err(|_| SaslError::MalformedRequest)?;
    let (flag, rest) = msg.split_once(',').ok_or(SaslError::MalformedRequest)?;
    let (authzid_field, bare) = rest.split_once(',').ok_or(SaslError::MalformedRequest)?;

    let cb_data = match flag {
        // The client does not do channel binding; a -PLUS mechanism without it is nonsense.
        "n" if !plus => None,
        // The client could bind but believes we cannot: if we offered -PLUS, someone removed it.
        "y" if !plus && plus_offered => return Err(SaslError::NotAuthorized),
        "y" if !plus => None,
        _ => {
            let name = flag.strip_prefix("p=").ok_or(SaslError::MalformedRequest)?;
            if !plus {
                return Err(SaslError::MalformedRequest);
            }
            let data = match name {
                "tls-exporter" => cb.tls_exporter.as_ref(),
                "tls-server-end-point" => cb.tls_server_end_point.as_ref(),
                _ => None,
            };
            Some(data.ok_or(SaslError::NotAuthorized)?.clone())
        }
    };

    let authzid = if authzid_field.is_empty() {
        None
    } else {
        let name = authzid_field
            .strip_prefix("a=")
            .ok_or(SaslError::MalformedRequest)?;
        Some(decode_saslname(name)?)
    };

    let mut attrs = bare.split(',');
    let username = match attrs.next() {
        // RFC 5802 §5.1: a mandatory extension we do not know means we must fail.
        Some(m) if m.starts_with("m=") => return Err(SaslError::MalformedRequest),
        Some(n) => decode_saslname(n.strip_prefix("n=").ok_or(SaslError::MalformedRequest)?)?,
        None => return Err(SaslError::MalformedRequest),
    };
    let client_nonce = attrs
        .next()
        .and_then(|r| r.strip_prefix("r="))
        .ok_or(SaslError::MalformedRequest)?;
    if !is_valid_nonce(client_nonce) {
        return Err(SaslError::MalformedRequest);
    }
    check_extensions(attrs)?;

    // What c= must carry: the GS2 header exactly as sent, then the binding data (§7).
    let mut cbind_input = format!("{flag},{authzid_field},").into_bytes();
    if let Some(data) = &cb_data {
        cbind_input.extend_from_slice(data);
    }

    Ok(ScramStart {
        hash,
        cbind_input,
        username,
        authzid,
        client_nonce: client_nonce.to_owned(),
        client_first_bare: bare.to_owned(),
    })
}

/// State after a valid client-first-message: the username is known, keys are needed.
#[derive(Debug)]
pub struct ScramStart {
    hash: ScramHash,
    /// GS2 header followed by the channel-binding data: what `c=` must encode.
    cbind_input: Vec<u8>,
    username: String,
    authzid: Option<String>,
    client_nonce: String,
    client_first_bare: String,
}

impl ScramStart {
    /// The authentication identity, saslname-decoded (`=2C` → `,`, `=3D` → `=`) but not yet
    /// prepared: apply [`crate::jid::nodeprep`] before looking the account up.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The authorization identity from the GS2 header, if the client sent one.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// The hash this exchange uses, i.e. which [`ScramKeys`] to fetch.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// A fresh server nonce; same as [`random_nonce`].
    pub fn random_nonce() -> String {
        random_nonce()
    }

    /// Step 2 for a known account. `nonce` is the server's part of the nonce (printable ASCII
    /// without `,`, e.g. from [`random_nonce`]); tests pass a fixed one. Returns the
    /// server-first-message.
    ///
    /// Keys for a different hash than the mechanism's are a caller bug; the exchange then
    /// carries on and `finish` fails with `TemporaryAuthFailure`.
    pub fn respond(self, keys: &ScramKeys, nonce: &str) -> (ScramAwaitFinal, Vec<u8>) {
        let len = self.hash.output_len();
        let usable = keys.hash == self.hash
            && keys.stored_key.len() == len
            && keys.server_key.len() == len
            && keys.iterations > 0
            && !keys.salt.is_empty();
        let forced_failure = (!usable).then_some(SaslError::TemporaryAuthFailure);
        self.respond_with(
            &keys.salt,
            keys.iterations,
            keys.stored_key.clone(),
            keys.server_key.clone(),
            nonce,
            forced_failure,
        )
    }

    /// Step 2 for an unknown account: answers with a salt derived from `secret` and the
    /// username (so repeated attempts see the same salt, as for a real account) and the default
    /// iteration count, then guarantees `finish` fails with `NotAuthorized` after doing the
    /// same work as for a real account.
    pub fn respond_unknown(self, nonce: &str, secret: &[u8]) -> (ScramAwaitFinal, Vec<u8>) {
        let digest = ScramHash::Sha256.hmac(
            secret,
            &[
                b"starling scram fake salt\0",
                self.hash.name().as_bytes(),
                b"\0",
                self.username.as_bytes(),
            ],
        );
        let salt = digest.get(..SALT_LEN).unwrap_or(&digest).to_vec();
        let zeros = vec![0; self.hash.output_len()];
        self.respond_with(
            &salt,
            Credentials::DEFAULT_ITERATIONS,
            zeros.clone(),
            zeros,
            nonce,
            Some(SaslError::NotAuthorized),
        )
    }

    fn respond_with(
        self,
        salt: &[u8],
        iterations: u32,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
        nonce: &str,
        forced_failure: Option<SaslError>,
    ) -> (ScramAwaitFinal, Vec<u8>) {
        let full_nonce = format!("{}{}", self.client_nonce, nonce);
        let server_first = format!("r={full_nonce},s={},i={iterations}", STANDARD.encode(salt));
        let mut auth_message =
            String::with_capacity(self.client_first_bare.len() + server_first.len() + 128);
        auth_message.push_str(&self.client_first_bare);
        auth_message.push(',');
        auth_message.push_str(&server_first);
        auth_message.push(',');
        let state = ScramAwaitFinal {
            hash: self.hash,
            cbind_input: self.cbind_input,
            nonce: full_nonce,
            auth_message,
            stored_key,
            server_key,
            forced_failure,
            username: self.username,
            authzid: self.authzid,
        };
        (state, server_first.into_bytes())
    }
}

/// State after the server-first-message: waiting for the client's proof.
pub struct ScramAwaitFinal {
    hash: ScramHash,
    cbind_input: Vec<u8>,
    /// Client nonce followed by server nonce.
    nonce: String,
    /// `client-first-message-bare "," server-first-message ","`; the client-final-message
    /// without proof completes it.
    auth_message: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// Set for unknown users and unusable keys: the error `finish` returns after doing the work.
    forced_failure: Option<SaslError>,
    username: String,
    authzid: Option<String>,
}

impl fmt::Debug for ScramAwaitFinal {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramAwaitFinal")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .field("authzid", &self.authzid)
            .finish_non_exhaustive()
    }
}

impl ScramAwaitFinal {
    /// The authentication identity, as in [`ScramStart::username`].
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The authorization identity, as in [`ScramStart::authzid`].
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// Step 3: verifies the client-final-message (channel binding, nonce, proof). `Ok` carries
    /// the server-final-message (`v=...`) to send in `<success/>`.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, SaslError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| SaslError::MalformedRequest)?;
        // The proof is always the last attribute, and base64 never contains ','.
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(SaslError::MalformedRequest)?;
        if proof.contains(',') {
            return Err(SaslError::MalformedRequest);
        }
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest)?;
        let nonce = attrs
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        check_extensions(attrs)?;

        let cbind = STANDARD
            .decode(cbind)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        if cbind != self.cbind_input {
            return Err(SaslError::NotAuthorized);
        }
        if nonce != self.nonce {
            return Err(SaslError::NotAuthorized);
        }
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::MalformedRequest);
        }

        let mut auth_message = self.auth_message;
        auth_message.push_str(without_proof);
        let client_signature = self.hash.hmac(&self.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let proof_ok: bool = self.hash.digest(&client_key).ct_eq(&self.stored_key).into();
        let server_signature = self.hash.hmac(&self.server_key, &[auth_message.as_bytes()]);

        if let Some(err) = self.forced_failure {
            return Err(err);
        }
        if !proof_ok {
            return Err(SaslError::NotAuthorized);
        }
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

/// RFC 5802 §7 `saslname`: UTF-8 without NUL, ',' and '=', except the escapes `=2C` and `=3D`.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() || s.contains(['\0', ',']) {
        return Err(SaslError::MalformedRequest);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((before, after)) = rest.split_once('=') {
        out.push_str(before);
        if let Some(tail) = after.strip_prefix("2C") {
            out.push(',');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("3D") {
            out.push('=');
            rest = tail;
        } else {
            return Err(SaslError::MalformedRequest);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 §7 `printable` without ',': %x21-2B / %x2D-7E, at least one.
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Optional extensions (`attr-val`: one letter, '=', a value) are allowed and ignored.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), SaslError> {
    for attr in attrs {
        let mut chars = attr.chars();
        let letter_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        if !letter_ok || chars.next() != Some('=') {
            return Err(SaslError::MalformedRequest);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b64(data: &[u8]) -> String {
        STANDARD.encode(data)
    }

    fn unb64(text: &str) -> Vec<u8> {
        STANDARD
            .decode(text)
            .unwrap_or_else(|e| panic!("test vector base64: {e}"))
    }

    fn keys(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        ScramKeys::derive(hash, password, salt, iterations).unwrap_or_else(|e| panic!("{e}"))
    }

    fn begin(
        hash: ScramHash,
        plus: bool,
        offered: bool,
        first: &str,
        cb: &ChannelBindings,
    ) -> ScramStart {
        start(hash, plus, offered, first.as_bytes(), cb)
            .unwrap_or_else(|e| panic!("{first:?}: {e}"))
    }

    /// A minimal SCRAM client, written from RFC 5802 §3, to drive the server end to end.
    struct Client {
        hash: ScramHash,
        gs2_header: String,
        cb_data: Vec<u8>,
        nonce: String,
        password: String,
    }

    impl Client {
        fn new(hash: ScramHash, gs2_header: &str, cb_data: &[u8], password: &str) -> Self {
            Self {
                hash,
                gs2_header: gs2_header.to_owned(),
                cb_data: cb_data.to_owned(),
                nonce: "clientnonce123".to_owned(),
                password: password.to_owned(),
            }
        }

        fn first_bare(&self) -> String {
            format!("n=user,r={}", self.nonce)
        }

        fn first(&self) -> String {
            format!("{}{}", self.gs2_header, self.first_bare())
        }

        /// Returns (client-final-message, expected server signature).
        fn final_message(&self, server_first: &[u8]) -> (String, Vec<u8>) {
            let server_first = std::str::from_utf8(server_first).unwrap_or_default();
            let mut nonce = "";
            let mut salt = Vec::new();
            let mut iterations = 0;
            for attr in server_first.split(',') {
                if let Some(r) = attr.strip_prefix("r=") {
                    nonce = r;
                } else if let Some(s) = attr.strip_prefix("s=") {
                    salt = unb64(s);
                } else if let Some(i) = attr.strip_prefix("i=") {
                    iterations = i.parse().unwrap_or(0);
                }
            }
            let salted = self
                .hash
                .salted_password(self.password.as_bytes(), &salt, iterations);
            let client_key = self.hash.hmac(&salted, &[b"Client Key"]);
            let stored_key = self.hash.digest(&client_key);
            let server_key = self.hash.hmac(&salted, &[b"Server Key"]);
            let mut cbind = self.gs2_header.as_bytes().to_vec();
            cbind.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={nonce}", b64(&cbind));
            let auth_message = format!("{},{server_first},{without_proof}", self.first_bare());
            let signature = self.hash.hmac(&stored_key, &[auth_message.as_bytes()]);
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            let server_signature = self.hash.hmac(&server_key, &[auth_message.as_bytes()]);
            (
                format!("{without_proof},p={}", b64(&proof)),
                server_signature,
            )
        }
    }

    /// RFC 5802 §5 example exchange, byte for byte.
    #[test]
    fn rfc5802_sha1_vector() {
        let keys = keys(ScramHash::Sha1, "pencil", &unb64("QSXCR+Q6sek8bf92"), 4096);
        let state = begin(
            ScramHash::Sha1,
            false,
            false,
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            &ChannelBindings::default(),
        );
        assert_eq!(state.username(), "user");
        assert_eq!(state.authzid(), None);
        let (state, server_first) = state.respond(&keys, "3rfcNHYJY1ZVvWVs7j");
        assert_eq!(
            server_first,
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let server_final = state.finish(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(server_final, Ok(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=".to_vec()));
    }

    /// RFC 7677 §3 example exchange, byte for byte.
    #[test]
    fn rfc7677_sha256_vector() {
        let keys = keys(
            ScramHash::Sha256,
            "pencil",
            &unb64("W22ZaJ0SNY7soEsUEjb6gQ=="),
            4096,
        );
        let state = begin(
            ScramHash::Sha256,
            false,
            false,
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            &ChannelBindings::default(),
        );
        let (state, server_first) = state.respond(&keys, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = state.finish(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            server_final,
            Ok(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec())
        );
    }

    #[test]
    fn sha512_round_trip() {
        let creds = Credentials::new("correct horse", 64).unwrap_or_else(|e| panic!("{e}"));
        let client = Client::new(ScramHash::Sha512, "n,,", b"", "correct horse");
        let state = begin(
            ScramHash::Sha512,
            false,
            false,
            &client.first(),
            &ChannelBindings::default(),
        );
        let (state, server_first) =
            state.respond(creds.keys(ScramHash::Sha512).unwrap(), &random_nonce());
        let (client_final, signature) = client.final_message(&server_first);
        let expected = format!("v={}", b64(&signature)).into_bytes();
        assert_eq!(state.finish(client_final.as_bytes()), Ok(expected));
    }

    #[test]
    fn channel_binding_round_trip_and_mismatch() {
        let keys = keys(ScramHash::Sha256, "pw", b"salt", 16);
        let cb = ChannelBindings {
            tls_exporter: Some(vec![1, 2, 3, 4]),
            tls_server_end_point: Some(vec![9, 9]),
        };
        for (header, data) in [
            ("p=tls-exporter,,", &[1u8, 2, 3, 4][..]),
            ("p=tls-server-end-point,,", &[9, 9]),
        ] {
            let client = Client::new(ScramHash::Sha256, header, data, "pw");
            let state = begin(ScramHash::Sha256, true, true, &client.first(), &cb);
            let (state, server_first) = state.respond(&keys, "srv");
            let (client_final, _) = client.final_message(&server_first);
            assert!(state.finish(client_final.as_bytes()).is_ok(), "{header}");
        }
        // The client saw different binding data (e.g. a MITM terminated TLS).
        let client = Client::new(ScramHash::Sha256, "p=tls-exporter,,", &[6, 6, 6], "pw");
        let state = begin(ScramHash::Sha256, true, true, &client.first(), &cb);
        let (state, server_first) = state.respond(&keys, "srv");
        let (client_final, _) = client.final_message(&server_first);
        assert_eq!(
            state.finish(client_final.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
        // The gs2 header in c= must match the one in the first message.
        let client = Client::new(ScramHash::Sha256, "n,,", b"", "pw");
        let state = begin(
            ScramHash::Sha256,
            false,
            false,
            "y,,n=user,r=clientnonce123",
            &cb,
        );
        let (state, server_first) = state.respond(&keys, "srv");
        let (client_final, _) = client.final_message(&server_first);
        assert_eq!(
            state.finish(client_final.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn gs2_header_rules() {
        let none = ChannelBindings::default();
        let cb = ChannelBindings {
            tls_exporter: Some(vec![1]),
            tls_server_end_point: None,
        };
        let bare = "n=user,r=abc";
        let run = |plus, offered, header: &str, cb: &ChannelBindings| {
            start(
                ScramHash::Sha256,
                plus,
                offered,
                format!("{header}{bare}").as_bytes(),
                cb,
            )
            .map(|_| ())
        };
        assert_eq!(run(false, false, "n,,", &none), Ok(()));
        assert_eq!(run(false, false, "y,,", &none), Ok(()));
        assert_eq!(run(false, true, "y,,", &cb), Err(SaslError::NotAuthorized));
        assert_eq!(
            run(true, true, "n,,", &cb),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            run(true, true, "y,,", &cb),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            run(false, true, "p=tls-exporter,,", &cb),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(run(true, true, "p=tls-exporter,,", &cb), Ok(()));
        assert_eq!(
            run(true, true, "p=tls-server-end-point,,", &cb),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(
            run(true, true, "p=tls-unique,,", &cb),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(
            run(true, true, "p=tls-exporter,,", &none),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(
            run(false, false, "x,,", &none),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            run(false, false, "n,b=x,", &none),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            run(false, false, "n,a=,", &none),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn client_first_syntax() {
        let none = ChannelBindings::default();
        let run = |msg: &str| start(ScramHash::Sha1, false, false, msg.as_bytes(), &none);
        let state =
            run("n,a=ad=3Dmin=2C,n=us=2Cer=3D,r=abc,x=ext").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state.username(), "us,er=");
        assert_eq!(state.authzid(), Some("ad=min,"));
        for bad in [
            "n,,m=ext,n=user,r=abc",
            "n,,n=user",
            "n,,n=,r=abc",
            "n,,n=us=2Xer,r=abc",
            "n,,n=user,r=",
            "n,,n=user,r=a b",
            "n,,r=abc,n=user",
            "n,,n=user,r=abc,bogus",
            "n,,n=u\0ser,r=abc",
            "n,,",
            "n",
            "",
        ] {
            assert_eq!(
                run(bad).map(|_| ()),
                Err(SaslError::MalformedRequest),
                "{bad:?}"
            );
        }
        assert_eq!(
            start(ScramHash::Sha1, false, false, b"n,,n=\xff,r=abc", &none).map(|_| ()),
            Err(SaslError::MalformedRequest)
        );
    }

    fn awaiting_final() -> (ScramAwaitFinal, Client, Vec<u8>) {
        let keys = keys(ScramHash::Sha256, "pencil", b"NaCl", 8);
        let client = Client::new(ScramHash::Sha256, "n,,", b"", "pencil");
        let state = begin(
            ScramHash::Sha256,
            false,
            false,
            &client.first(),
            &ChannelBindings::default(),
        );
        let (state, server_first) = state.respond(&keys, "servernonce");
        (state, client, server_first)
    }

    #[test]
    fn tampered_proof_fails() {
        let (state, client, server_first) = awaiting_final();
        let (client_final, _) = client.final_message(&server_first);
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap_or_default();
        let mut proof = unb64(proof);
        if let Some(first) = proof.first_mut() {
            *first ^= 1;
        }
        let tampered = format!("{without_proof},p={}", b64(&proof));
        assert_eq!(
            state.finish(tampered.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn wrong_password_fails() {
        let (state, mut client, server_first) = awaiting_final();
        client.password = "pencil2".to_owned();
        let (client_final, _) = client.final_message(&server_first);
        assert_eq!(
            state.finish(client_final.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn wrong_nonce_fails() {
        let (state, client, server_first) = awaiting_final();
        let (client_final, _) = client.final_message(&server_first);
        let wrong = client_final.replace("servernonce", "servernoncf");
        assert_eq!(
            state.finish(wrong.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn bad_base64_and_syntax_fail() {
        let (state, client, server_first) = awaiting_final();
        let (client_final, _) = client.final_message(&server_first);
        let (without_proof, _) = client_final.rsplit_once(",p=").unwrap_or_default();
        let bad_proof = format!("{without_proof},p=!!notbase64!!");
        assert_eq!(
            state.finish(bad_proof.as_bytes()),
            Err(SaslError::IncorrectEncoding)
        );

        let (state, _, _) = awaiting_final();
        let bad_cbind = client_final.replace("c=biws", "c=bi*s");
        assert_eq!(
            state.finish(bad_cbind.as_bytes()),
            Err(SaslError::IncorrectEncoding)
        );

        for bad in [
            &b""[..],
            b"c=biws",
            b"r=x,c=biws,p=AAAA",
            b"c=biws,r=x,p=a,b",
            b"\xff",
        ] {
            let (state, _, _) = awaiting_final();
            assert_eq!(
                state.finish(bad),
                Err(SaslError::MalformedRequest),
                "{bad:?}"
            );
        }
        let (state, _, _) = awaiting_final();
        let short = format!("{without_proof},p={}", b64(b"short"));
        assert_eq!(
            state.finish(short.as_bytes()),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn unknown_user_gets_stable_fake_salt_and_fails() {
        let none = ChannelBindings::default();
        let first = "n,,n=ghost,r=abc";
        let (_, one) =
            begin(ScramHash::Sha256, false, false, first, &none).respond_unknown("s", b"k");
        let (state, two) =
            begin(ScramHash::Sha256, false, false, first, &none).respond_unknown("s", b"k");
        assert_eq!(one, two);
        let (_, other) = begin(ScramHash::Sha256, false, false, "n,,n=ghost2,r=abc", &none)
            .respond_unknown("s", b"k");
        assert_ne!(one, other);
        assert!(String::from_utf8_lossy(&one).ends_with(",i=4096"));
        // Even a proof computed from "the" password for the fake salt is refused.
        let client = Client {
            hash: ScramHash::Sha256,
            gs2_header: "n,,".to_owned(),
            cb_data: Vec::new(),
            nonce: "abc".to_owned(),
            password: "anything".to_owned(),
        };
        let (client_final, _) = client.final_message(&two);
        let client_final = client_final.replace("n=user", "n=ghost");
        assert_eq!(
            state.finish(client_final.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn mismatched_keys_fail_temporarily() {
        let sha1 = keys(ScramHash::Sha1, "pencil", b"salt", 8);
        let client = Client::new(ScramHash::Sha256, "n,,", b"", "pencil");
        let state = begin(
            ScramHash::Sha256,
            false,
            false,
            &client.first(),
            &ChannelBindings::default(),
        );
        let (state, server_first) = state.respond(&sha1, "n");
        let (client_final, _) = client.final_message(&server_first);
        assert_eq!(
            state.finish(client_final.as_bytes()),
            Err(SaslError::TemporaryAuthFailure)
        );
    }

    #[test]
    fn password_checks() {
        let creds = Credentials::new("pencil", 16).unwrap_or_else(|e| panic!("{e}"));
        assert!(creds.verify_plain("pencil"));
        assert!(!creds.verify_plain("Pencil"));
        assert!(!creds.verify_plain(""));
        let key = |h| creds.keys(h).unwrap();
        assert!(key(ScramHash::Sha1).verify_password("pencil"));
        assert!(key(ScramHash::Sha512).verify_password("pencil"));
        assert_ne!(key(ScramHash::Sha1).salt, key(ScramHash::Sha256).salt);
        assert_eq!(key(ScramHash::Sha512).stored_key.len(), 64);
        assert_eq!(key(ScramHash::Sha1).server_key.len(), 20);
        assert!(creds.is_complete());
        // Imported accounts may have one hash only; PLAIN still works with it.
        let only_sha1 = Credentials::from_keys([key(ScramHash::Sha1).clone()]).unwrap();
        assert!(!only_sha1.is_complete());
        assert!(only_sha1.keys(ScramHash::Sha256).is_none());
        assert!(only_sha1.verify_plain("pencil") && !only_sha1.verify_plain("pencil2"));
        assert!(Credentials::from_keys([]).is_none());
        // OpaqueString maps non-ASCII spaces to ASCII space before hashing.
        let spaced = Credentials::new("a b", 4).unwrap_or_else(|e| panic!("{e}"));
        assert!(spaced.verify_plain("a\u{3000}b"));
        assert_eq!(Credentials::new("", 4), Err(SaslError::MalformedRequest));
        assert_eq!(
            Credentials::new("bell\u{7}", 4),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            Credentials::new("pw", 0),
            Err(SaslError::TemporaryAuthFailure)
        );
        assert_ne!(random_nonce(), random_nonce());
        assert_eq!(random_nonce().len(), 24);
    }

    proptest! {
        #[test]
        fn client_first_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let cb = ChannelBindings { tls_exporter: Some(vec![1]), tls_server_end_point: None };
            let _ = start(ScramHash::Sha1, false, true, &bytes, &cb);
            let _ = start(ScramHash::Sha1, true, true, &bytes, &cb);
        }

        #[test]
        fn client_first_shaped_never_panics(s in "[npy]?(=[a-z-]{0,6})?,(a=[^,]{0,5})?,(m=x,)?n=[^,]{0,6},r=[!-~]{0,6}(,[a-z]=[^,]{0,4}){0,2}") {
            let cb = ChannelBindings { tls_exporter: Some(vec![1]), tls_server_end_point: Some(vec![2]) };
            for (plus, offered) in [(false, false), (false, true), (true, true)] {
                let _ = start(ScramHash::Sha256, plus, offered, s.as_bytes(), &cb);
            }
        }

        #[test]
        fn client_final_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (state, _, _) = awaiting_final();
            let _ = state.finish(&bytes);
        }

        #[test]
        fn client_final_shaped_never_panics(s in "c=[A-Za-z0-9+/=*]{0,8},r=[!-~]{0,20}(,[a-z]=[^,]{0,3})?,p=[A-Za-z0-9+/=]{0,50}") {
            let (state, _, _) = awaiting_final();
            prop_assert!(state.finish(s.as_bytes()).is_err());
        }
    }
}
