//! [`PepStore`]: the nodes and items of each account's personal eventing service (XEP-0163 on
//! XEP-0060).
//!
//! A node belongs to one account and has a configuration ([`PepNode`]); its items are kept
//! newest first up to the node's `max_items`. The store does not decide who may read or
//! publish: the PEP module does, and hands the store the node configuration to use when a
//! publish creates the node (XEP-0060 §7.1.4 auto-create). Creating a node, storing an item and
//! trimming the node to `max_items` happen in one transaction, as does the per-account node
//! quota (DESIGN §6).

use starling_xmpp::jid::BareJid;

use crate::{BoxFuture, StorageError};

/// The configuration of one node (the XEP-0060 §16.4.4 `pubsub#node_config` fields PEP uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepNode {
    /// The node name (`urn:xmpp:avatar:metadata`, ...).
    pub name: String,
    /// `pubsub#access_model`: `presence`, `open`, `roster` or `whitelist`.
    pub access_model: String,
    /// `pubsub#max_items`: items kept; older ones are dropped when a new one arrives.
    pub max_items: u32,
    /// `pubsub#persist_items`: if false, items are not kept at all (notifications only).
    pub persist_items: bool,
    /// `pubsub#send_last_published_item`: `never`, `on_sub` or `on_sub_and_presence`.
    pub send_last_published_item: String,
    /// `pubsub#roster_groups_allowed`: the roster groups the `roster` access model admits.
    pub roster_groups: Vec<String>,
}

/// One published item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    /// The item id (unique within its node).
    pub id: String,
    /// The payload element, serialised; empty for an item without payload.
    pub payload: String,
    /// The full JID that published it.
    pub publisher: String,
    /// When it was (last) published, µs since the Unix epoch, UTC.
    pub published_at: i64,
}

/// Which items of a node to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PepItemsQuery<'a> {
    /// Every item, newest first.
    All,
    /// The `n` newest items, newest first (XEP-0060 §6.5.7 `max_items`).
    Newest(u32),
    /// The items with these ids, newest first; unknown ids are skipped (§6.5.8).
    Ids(&'a [String]),
}

/// XEP-0163 personal eventing: nodes and items per account.
pub trait PepStore: Send + Sync {
    /// One node's configuration, or `None` if the account has no such node.
    fn pep_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<PepNode>, StorageError>>;

    /// Every node of the account, by name.
    fn pep_nodes<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, Result<Vec<PepNode>, StorageError>>;

    /// Creates the node, or replaces the configuration of an existing one and drops the items
    /// beyond its new `max_items` (all of them if it no longer persists items). Creating a node
    /// fails with [`StorageError::QuotaExceeded`] (storing nothing) if the account would then
    /// have more than `max_nodes` nodes.
    fn put_pep_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a PepNode,
        max_nodes: u32,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Stores `item` in the node (creating the node with `config` if it does not exist, under
    /// the same quota as [`PepStore::put_pep_node`]); an item with the same id is replaced and
    /// becomes the newest. Items beyond the node's `max_items` are dropped, oldest first; a
    /// node that does not persist items keeps none. All in one transaction.
    fn publish_pep_item<'a>(
        &'a self,
        user: &'a BareJid,
        config: &'a PepNode,
        item: &'a PepItem,
        max_nodes: u32,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Items of a node (an unknown node has none).
    fn pep_items<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        query: PepItemsQuery<'a>,
    ) -> BoxFuture<'a, Result<Vec<PepItem>, StorageError>>;

    /// Deletes one item; false if there was no such item.
    fn retract_pep_item<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Deletes a node and its items; false if there was no such node.
    fn delete_pep_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// Deletes every node and item of the account; returns how many nodes were removed.
    fn remove_pep<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, Result<u64, StorageError>>;
}
