//! SASL authentication of a client stream (RFC 6120 §6): mechanism choice, the SCRAM
//! exchange and PLAIN, with credentials fetched from the account store.
//!
//! The message-level rules live in `starling_xmpp::{sasl, scram}`; this module chains them
//! with the account lookup. Unknown users get a SCRAM exchange indistinguishable from a real
//! one until the final proof fails, so usernames cannot be probed.

use std::sync::OnceLock;

use starling_storage::AccountStore;
use starling_xmpp::jid::{BareJid, nodeprep};
use starling_xmpp::sasl::{self, Mechanism, SaslError};
use starling_xmpp::scram::{self, ChannelBindings, Credentials, ScramAwaitFinal};

/// What the connection must do next.
#[derive(Debug)]
pub enum Step {
    /// Send `<challenge/>` with this data and wait for `<response/>`.
    Challenge(Vec<u8>),
    /// Authenticated: send `<success/>` (with additional data for SCRAM) and restart the stream.
    Success {
        /// The authenticated account.
        user: BareJid,
        /// SCRAM's server-final-message.
        additional: Option<Vec<u8>>,
    },
    /// Send `<failure/>` with this condition. `user` is the claimed identity, for the log.
    Failure {
        /// The condition.
        error: SaslError,
        /// The username the client tried, if it got that far.
        user: Option<String>,
    },
}

enum Pending {
    /// A mechanism was chosen without an initial response; `<response/>` carries it.
    Initial(Mechanism),
    /// SCRAM server-first sent; the client-final-message is expected.
    Final(Box<ScramAwaitFinal>, Option<BareJid>, String),
}

/// One stream's SASL negotiation.
pub struct Authenticator {
    host: String,
    offered: Vec<Mechanism>,
    bindings: ChannelBindings,
    pending: Option<Pending>,
}

/// Per-process secret for the fake salts of unknown users.
fn fake_salt_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

impl Authenticator {
    /// Starts a negotiation for `host` with the mechanisms that were advertised.
    pub fn new(host: String, offered: Vec<Mechanism>, bindings: ChannelBindings) -> Self {
        Self {
            host,
            offered,
            bindings,
            pending: None,
        }
    }

    /// True while an exchange is in progress.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// `<auth mechanism='..'>payload</auth>`.
    pub async fn auth(
        &mut self,
        accounts: &dyn AccountStore,
        mechanism: Option<&str>,
        payload: &str,
    ) -> Step {
        self.pending = None;
        let Some(mech) = mechanism
            .and_then(Mechanism::from_name)
            .filter(|m| self.offered.contains(m))
        else {
            return failure(SaslError::InvalidMechanism, None);
        };
        let payload = payload.trim();
        if payload.is_empty() {
            // No initial response: ask for it with an empty challenge (RFC 6120 §6.4.2).
            self.pending = Some(Pending::Initial(mech));
            return Step::Challenge(Vec::new());
        }
        match sasl::decode_payload(payload) {
            Ok(data) => self.initial(accounts, mech, &data).await,
            Err(e) => failure(e, None),
        }
    }

    /// `<response>payload</response>`.
    pub async fn response(&mut self, accounts: &dyn AccountStore, payload: &str) -> Step {
        let data = match sasl::decode_payload(payload.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.pending = None;
                return failure(e, None);
            }
        };
        match self.pending.take() {
            None => failure(SaslError::MalformedRequest, None),
            Some(Pending::Initial(mech)) => self.initial(accounts, mech, &data).await,
            Some(Pending::Final(exchange, user, name)) => match exchange.finish(&data) {
                Ok(server_final) => match user {
                    Some(user) => Step::Success {
                        user,
                        additional: Some(server_final),
                    },
                    None => failure(SaslError::NotAuthorized, Some(name)),
                },
                Err(e) => failure(e, Some(name)),
            },
        }
    }

    /// `<abort/>`.
    pub fn abort(&mut self) -> Step {
        self.pending = None;
        failure(SaslError::Aborted, None)
    }

    async fn initial(&mut self, accounts: &dyn AccountStore, mech: Mechanism, data: &[u8]) -> Step {
        match mech.scram() {
            Some((hash, plus)) => {
                let plus_offered = self
                    .offered
                    .iter()
                    .any(|m| m.scram().is_some_and(|(_, p)| p));
                let start = match scram::start(hash, plus, plus_offered, data, &self.bindings) {
                    Ok(s) => s,
                    Err(e) => return failure(e, None),
                };
                let name = start.username().to_owned();
                let user = self.account(&name, start.authzid());
                let user = match user {
                    Ok(u) => u,
                    Err(e) => return failure(e, Some(name)),
                };
                let creds = match &user {
                    Some(u) => match accounts.credentials(u).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot load credentials");
                            return failure(SaslError::TemporaryAuthFailure, Some(name));
                        }
                    },
                    None => None,
                };
                let nonce = scram::random_nonce();
                // An imported account may lack this hash's keys: it then fails like an
                // unknown account (the client retries with PLAIN or another mechanism).
                let (exchange, server_first, known) =
                    match creds.as_ref().and_then(|c| c.keys(hash)) {
                        Some(keys) => {
                            let (x, first) = start.respond(keys, &nonce);
                            (x, first, user)
                        }
                        None => {
                            let (x, first) = start.respond_unknown(&nonce, fake_salt_secret());
                            (x, first, None)
                        }
                    };
                self.pending = Some(Pending::Final(Box::new(exchange), known, name));
                Step::Challenge(server_first)
            }
            None => self.plain(accounts, data).await,
        }
    }

    async fn plain(&mut self, accounts: &dyn AccountStore, data: &[u8]) -> Step {
        let creds = match sasl::parse_plain(data) {
            Ok(c) => c,
            Err(e) => return failure(e, None),
        };
        let name = creds.authcid.clone();
        let user = match self.account(&creds.authcid, creds.authzid.as_deref()) {
            Ok(Some(u)) => u,
            Ok(None) => return failure(SaslError::NotAuthorized, Some(name)),
            Err(e) => return failure(e, Some(name)),
        };
        let stored = match accounts.credentials(&user).await {
            Ok(Some(c)) => c,
            Ok(None) => return failure(SaslError::NotAuthorized, Some(name)),
            Err(e) => {
                tracing::error!(error = %e, "cannot load credentials");
                return failure(SaslError::TemporaryAuthFailure, Some(name));
            }
        };
        // PBKDF2 is deliberately slow: keep it off the async workers.
        let password = creds.password;
        let complete = stored.is_complete();
        let checked = tokio::task::spawn_blocking(move || {
            if !stored.verify_plain(&password) {
                return None;
            }
            // An imported account with only some hashes: now that the password is known,
            // derive keys for all of them, so every SCRAM mechanism works from now on.
            Some((!complete).then(|| Credentials::new(&password, Credentials::DEFAULT_ITERATIONS)))
        })
        .await
        .ok()
        .flatten();
        if let Some(upgrade) = checked {
            if let Some(Ok(full)) = upgrade {
                match accounts.set_credentials(&user, &full).await {
                    Ok(()) => tracing::info!(%user, "imported account: SCRAM keys completed"),
                    Err(e) => tracing::warn!(%user, error = %e, "cannot complete SCRAM keys"),
                }
            }
            Step::Success {
                user,
                additional: None,
            }
        } else {
            failure(SaslError::NotAuthorized, Some(name))
        }
    }

    /// Maps a SASL username (and authzid) to an account of this host. `Ok(None)` means the
    /// name cannot be an account here; the caller still fails the exchange without saying why.
    fn account(&self, name: &str, authzid: Option<&str>) -> Result<Option<BareJid>, SaslError> {
        let Ok(node) = nodeprep(name) else {
            return Ok(None);
        };
        let Ok(user) = BareJid::new(Some(&node), &self.host) else {
            return Ok(None);
        };
        if let Some(authzid) = authzid.filter(|a| !a.is_empty())
            && BareJid::parse(authzid).ok().as_ref() != Some(&user)
        {
            return Err(SaslError::InvalidAuthzid);
        }
        Ok(Some(user))
    }
}

fn failure(error: SaslError, user: Option<String>) -> Step {
    Step::Failure { error, user }
}
