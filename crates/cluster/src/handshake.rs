//! Mutual authentication of a mesh link (DESIGN.md §7.1), sans-I/O.
//!
//! Both sides send a [`Hello`], check the other's (same hosts, the same shared database, not
//! our own name, not a removed node), then send a proof: `HMAC-SHA-256(cookie, label ‖ role ‖
//! initiator hello ‖ responder hello)`. Each hello carries a fresh nonce, so proofs cannot be
//! replayed, and the role byte stops a proof from being reflected back. The cookie never
//! crosses the wire. A refusal is sent to the peer before closing, so both operators see why.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::cookie::Cookie;
use crate::wire::{Hello, Message, Refusal};

const LABEL: &[u8] = b"starling cluster handshake v1";

/// Which side opened the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Dialled out.
    Initiator,
    /// Accepted.
    Responder,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Initiator => b'I',
            Self::Responder => b'R',
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Initiator => Self::Responder,
            Self::Responder => Self::Initiator,
        }
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// We refused the peer (the refusal was sent to it).
    #[error("refused the peer: {0:?}")]
    WeRefused(Refusal),
    /// The peer refused us.
    #[error("the peer refused this node: {0:?}")]
    PeerRefused(Refusal),
    /// The peer broke the protocol (message out of order).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// What the link task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this message.
    Send(Message),
    /// Both sides are authenticated: the link is up with this peer.
    Established(Hello),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitProof,
    Done,
}

/// One side of a link handshake.
#[derive(Debug)]
pub struct Handshake {
    role: Role,
    ours: Hello,
    cookie: Cookie,
    peer: Option<Hello>,
    state: State,
}

impl Handshake {
    /// Starts a handshake; the returned message (our hello) goes out first.
    pub fn start(role: Role, ours: Hello, cookie: Cookie) -> (Self, Message) {
        let hello = Message::Hello(ours.clone());
        (
            Self {
                role,
                ours,
                cookie,
                peer: None,
                state: State::AwaitHello,
            },
            hello,
        )
    }

    /// Handles a message from the peer. `admit` is the membership policy (e.g. `Removed` for a
    /// node that left the cluster); hosts, database and name are checked here.
    pub fn receive(
        &mut self,
        message: Message,
        admit: impl FnOnce(&Hello) -> Result<(), Refusal>,
    ) -> Result<Vec<Step>, (Vec<Step>, HandshakeError)> {
        match (self.state, message) {
            (_, Message::Refused(r)) => Err((Vec::new(), HandshakeError::PeerRefused(r))),
            (State::AwaitHello, Message::Hello(peer)) => {
                if let Err(refusal) = self.check(&peer).and_then(|()| admit(&peer)) {
                    return Err((
                        vec![Step::Send(Message::Refused(refusal.clone()))],
                        HandshakeError::WeRefused(refusal),
                    ));
                }
                let proof = self.proof(self.role, &peer);
                self.peer = Some(peer);
                self.state = State::AwaitProof;
                Ok(vec![Step::Send(Message::Proof(proof))])
            }
            (State::AwaitProof, Message::Proof(theirs)) => {
                let Some(peer) = self.peer.clone() else {
                    return Err((Vec::new(), HandshakeError::Protocol("proof before hello")));
                };
                if !self.verify(&peer, &theirs) {
                    return Err((
                        vec![Step::Send(Message::Refused(Refusal::Unauthenticated))],
                        HandshakeError::WeRefused(Refusal::Unauthenticated),
                    ));
                }
                self.state = State::Done;
                Ok(vec![Step::Established(peer)])
            }
            _ => Err((Vec::new(), HandshakeError::Protocol("unexpected message"))),
        }
    }

    fn check(&self, peer: &Hello) -> Result<(), Refusal> {
        if peer.node == self.ours.node {
            return Err(Refusal::NameInUse);
        }
        let mut ours_hosts = self.ours.hosts.clone();
        let mut theirs = peer.hosts.clone();
        ours_hosts.sort();
        theirs.sort();
        if ours_hosts != theirs {
            return Err(Refusal::HostsMismatch {
                ours: ours_hosts,
                theirs,
            });
        }
        // The embedded database cannot be shared: a cluster on it would lose data.
        if self.ours.db_id != peer.db_id || self.ours.db_id == "sqlite" {
            return Err(Refusal::SharedDbMismatch {
                ours: self.ours.db_id.clone(),
                theirs: peer.db_id.clone(),
            });
        }
        Ok(())
    }

    fn mac(&self, prover: Role, peer: &Hello) -> Hmac<Sha256> {
        let (initiator, responder) = match self.role {
            Role::Initiator => (&self.ours, peer),
            Role::Responder => (peer, &self.ours),
        };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.cookie.as_bytes())
            .unwrap_or_else(|_| {
                // HMAC takes keys of any length; this branch cannot run.
                <Hmac<Sha256> as KeyInit>::new(&Default::default())
            });
        mac.update(LABEL);
        mac.update(&[prover.byte()]);
        for hello in [initiator, responder] {
            let bytes = postcard::to_stdvec(hello).unwrap_or_default();
            mac.update(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
            mac.update(&bytes);
        }
        mac
    }

    fn proof(&self, prover: Role, peer: &Hello) -> Vec<u8> {
        self.mac(prover, peer).finalize().into_bytes().to_vec()
    }

    fn verify(&self, peer: &Hello, proof: &[u8]) -> bool {
        // Constant-time comparison.
        self.mac(self.role.other(), peer)
            .verify_slice(proof)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str) -> Hello {
        Hello {
            node: node.into(),
            incarnation: rand::random(),
            nonce: rand::random(),
            hosts: vec!["example.org".into(), "example.net".into()],
            db_id: "pgsql://db:5432/xmpp".into(),
            listen: "127.0.0.1:5370".into(),
        }
    }

    type Outcome = Option<Result<Hello, HandshakeError>>;

    /// Feeds `inbox` to one side; its messages go to `outbox`, its conclusion to `outcome`.
    fn feed(
        hs: &mut Handshake,
        inbox: Vec<Message>,
        outbox: &mut Vec<Message>,
        outcome: &mut Outcome,
    ) {
        for m in inbox {
            if outcome.is_some() {
                return;
            }
            let (steps, result) = match hs.receive(m, |_| Ok(())) {
                Ok(steps) => (steps, None),
                Err((steps, e)) => (steps, Some(Err(e))),
            };
            for step in steps {
                match step {
                    Step::Send(m) => outbox.push(m),
                    Step::Established(p) => *outcome = Some(Ok(p)),
                }
            }
            if result.is_some() {
                *outcome = result;
            }
        }
    }

    /// Drives two handshakes against each other; returns what each side concluded.
    fn run(
        a: Hello,
        a_cookie: Cookie,
        b: Hello,
        b_cookie: Cookie,
    ) -> (Result<Hello, HandshakeError>, Result<Hello, HandshakeError>) {
        let (mut ini, m1) = Handshake::start(Role::Initiator, a, a_cookie);
        let (mut res, m2) = Handshake::start(Role::Responder, b, b_cookie);
        let (mut to_res, mut to_ini) = (vec![m1], vec![m2]);
        let (mut out_ini, mut out_res) = (None, None);
        for _ in 0..4 {
            feed(
                &mut ini,
                std::mem::take(&mut to_ini),
                &mut to_res,
                &mut out_ini,
            );
            feed(
                &mut res,
                std::mem::take(&mut to_res),
                &mut to_ini,
                &mut out_res,
            );
        }
        let none = || Err(HandshakeError::Protocol("no outcome"));
        (out_ini.unwrap_or_else(none), out_res.unwrap_or_else(none))
    }

    #[test]
    fn same_cookie_establishes_both_ways() {
        let cookie = Cookie::generate();
        let (a, b) = (hello("n1"), hello("n2"));
        let (ra, rb) = run(a.clone(), cookie.clone(), b.clone(), cookie);
        assert_eq!(ra, Ok(b));
        assert_eq!(rb, Ok(a));
    }

    #[test]
    fn different_cookie_is_unauthenticated_on_both_sides() {
        let (ra, rb) = run(
            hello("n1"),
            Cookie::generate(),
            hello("n2"),
            Cookie::generate(),
        );
        assert!(
            matches!(
                ra,
                Err(HandshakeError::WeRefused(Refusal::Unauthenticated))
                    | Err(HandshakeError::PeerRefused(Refusal::Unauthenticated))
            ),
            "{ra:?}"
        );
        assert!(rb.is_err(), "{rb:?}");
    }

    #[test]
    fn mismatches_are_refused_with_both_values() {
        let cookie = Cookie::generate();
        let mut b = hello("n2");
        b.hosts = vec!["other.org".into()];
        let (ra, _) = run(hello("n1"), cookie.clone(), b, cookie.clone());
        match ra {
            Err(HandshakeError::WeRefused(Refusal::HostsMismatch { ours, theirs })) => {
                assert_eq!(
                    ours,
                    vec!["example.net".to_owned(), "example.org".to_owned()]
                );
                assert_eq!(theirs, vec!["other.org".to_owned()]);
            }
            other => panic!("{other:?}"),
        }
        let mut a = hello("n1");
        let mut b = hello("n2");
        a.db_id = "sqlite".into();
        b.db_id = "sqlite".into();
        let (ra, _) = run(a, cookie.clone(), b, cookie.clone());
        assert!(
            matches!(
                ra,
                Err(HandshakeError::WeRefused(Refusal::SharedDbMismatch { .. }))
            ),
            "{ra:?}"
        );
        let (ra, _) = run(hello("same"), cookie.clone(), hello("same"), cookie);
        assert!(
            matches!(ra, Err(HandshakeError::WeRefused(Refusal::NameInUse))),
            "{ra:?}"
        );
    }

    #[test]
    fn a_reflected_proof_is_rejected() {
        let cookie = Cookie::generate();
        let ours = hello("n1");
        let peer = hello("n2");
        let (mut hs, _) = Handshake::start(Role::Initiator, ours, cookie);
        let steps = hs.receive(Message::Hello(peer), |_| Ok(())).unwrap();
        let Some(Step::Send(Message::Proof(mine))) = steps.into_iter().next() else {
            panic!("expected our proof");
        };
        // Sending our own proof back must not authenticate the peer.
        let out = hs.receive(Message::Proof(mine), |_| Ok(()));
        assert!(matches!(
            out,
            Err((_, HandshakeError::WeRefused(Refusal::Unauthenticated)))
        ));
    }

    #[test]
    fn policy_refusals_and_order_violations() {
        let cookie = Cookie::generate();
        let (mut hs, _) = Handshake::start(Role::Responder, hello("n1"), cookie.clone());
        let out = hs.receive(Message::Hello(hello("n2")), |_| Err(Refusal::Removed));
        assert!(matches!(
            out,
            Err((_, HandshakeError::WeRefused(Refusal::Removed)))
        ));
        let (mut hs, _) = Handshake::start(Role::Responder, hello("n1"), cookie);
        let out = hs.receive(Message::Proof(vec![0; 32]), |_| Ok(()));
        assert!(matches!(out, Err((_, HandshakeError::Protocol(_)))));
    }
}
