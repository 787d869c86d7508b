//! What the server itself reads in a vCard (XEP-0054): the avatar hash of XEP-0153, needed
//! wherever a vCard is stored (the vCard module, account import).

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::Element;

/// XEP-0054 namespace.
pub const NS: &str = "vcard-temp";

/// XEP-0153 §3.1: lowercase hex SHA-1 of the decoded `PHOTO/BINVAL`, or `None` if the vCard
/// has no photo data (none, an `EXTVAL` link, empty, or not base64).
pub fn photo_hash(vcard: &Element) -> Option<String> {
    let binval = vcard
        .get_child("PHOTO", NS)?
        .get_child("BINVAL", NS)?
        .text();
    // vCard base64 is commonly folded into lines (RFC 2426 §2.4.1); whitespace is not data.
    let compact: String = binval.chars().filter(|c| !c.is_whitespace()).collect();
    let image = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
        .filter(|bytes| !bytes.is_empty())?;
    let digest = Sha1::digest(&image);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}
