//! The upload slot, sans I/O: what `mod_http_upload` (the XMPP side) and the HTTP handler in
//! `starling-http` (the file side) must agree on, written once (XEP-0363 §4-§5).
//!
//! - **Paths.** A file lives at `/<host>/<user dir>/<random>/<file name>` under the handler's
//!   mount path, and at `docroot/<user dir>/<random>/<file name>` on disk. The user directory
//!   is a keyed hash of the bare JID ([`SigningKey::user_dir`]), so quota is a directory sum
//!   and `rm_on_unregister` one removal, without putting the JID in URLs. The host segment
//!   tells the handler whose options apply.
//! - **Signatures.** The PUT URL carries `?size=N&expires=MS&sig=HEX`:
//!   `HMAC-SHA-256(key, "PUT" ‖ path ‖ size ‖ content type ‖ expiry)`, compared in constant
//!   time. Only whoever was handed the URL can PUT, only that many bytes, only that content
//!   type, only before the expiry. GET URLs are unsigned (XEP-0363: anyone with the URL).
//! - **File names** are sanitised ([`sanitise_filename`]) so a name is always one safe path
//!   segment; the handler refuses any segment that sanitising would change.
//! - **Serving**: content types by extension ([`content_type_for`]), whether to serve inline
//!   ([`is_inline`]), single `Range` requests ([`parse_range`], RFC 9110 §14).

use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// XEP-0363 namespace.
pub const NS: &str = "urn:xmpp:http:upload:0";

/// Longest file name kept, in bytes (a common file-system limit).
pub const MAX_FILENAME_BYTES: usize = 200;

/// Length in hex digits of the user directory name.
pub const USER_DIR_LEN: usize = 32;

/// Length in hex digits of the random per-slot directory name.
pub const RANDOM_LEN: usize = 32;

/// Domain separation labels: a key or hash made for one purpose never verifies another.
const KEY_LABEL: &[u8] = b"starling http_upload key v1";
const USER_LABEL: &[u8] = b"user\0";
const PUT_LABEL: &[u8] = b"PUT\0";

/// The key every signature and user directory of one host is made with.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the key.
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Derives the key from secret material of any length (the `secret` option, the cluster
    /// cookie, or the random `upload.secret` file).
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = mac(secret);
        mac.update(KEY_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    /// The directory of `bare_jid` (normalised): 32 hex digits of a keyed hash, so a URL does
    /// not reveal the uploader and directory names cannot be guessed from a JID.
    pub fn user_dir(&self, bare_jid: &str) -> String {
        let mut mac = mac(&self.0);
        mac.update(USER_LABEL);
        mac.update(bare_jid.as_bytes());
        let digest = mac.finalize().into_bytes();
        hex(digest.get(..USER_DIR_LEN / 2).unwrap_or_default())
    }

    /// The signature of a PUT claim, in hex.
    pub fn sign(&self, claim: &PutClaim<'_>) -> String {
        hex(&self.claim_mac(claim).finalize().into_bytes())
    }

    /// True if `signature` (hex) is this key's signature of `claim`; constant time.
    pub fn verify(&self, claim: &PutClaim<'_>, signature: &str) -> bool {
        let Some(bytes) = unhex(signature) else {
            return false;
        };
        self.claim_mac(claim).verify_slice(&bytes).is_ok()
    }

    fn claim_mac(&self, claim: &PutClaim<'_>) -> Hmac<Sha256> {
        let mut mac = mac(&self.0);
        mac.update(PUT_LABEL);
        // Each field is length-prefixed, so no two claims serialise alike.
        for field in [
            claim.path.as_bytes(),
            &claim.size.to_be_bytes(),
            claim.content_type.as_bytes(),
            &claim.expires_ms.to_be_bytes(),
        ] {
            mac.update(&u64::try_from(field.len()).unwrap_or(u64::MAX).to_be_bytes());
            mac.update(field);
        }
        mac
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        // HMAC takes keys of any length; this branch cannot run.
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

/// What a PUT URL authorises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutClaim<'a> {
    /// The file's path relative to the handler's mount (`/<host>/<user>/<random>/<name>`),
    /// percent-decoded.
    pub path: &'a str,
    /// Exact size in bytes.
    pub size: u64,
    /// The content type the slot was requested with; empty when none was given (then the
    /// PUT may carry any).
    pub content_type: &'a str,
    /// Unix time in milliseconds after which the PUT is refused.
    pub expires_ms: i64,
}

/// The parts of a file's location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePath {
    /// The host whose options apply.
    pub host: String,
    /// The uploader's directory ([`SigningKey::user_dir`]).
    pub user_dir: String,
    /// The slot's random directory.
    pub random: String,
    /// The sanitised file name.
    pub filename: String,
}

impl FilePath {
    /// Checks each segment as the handler received it (percent-decoded): a served host name,
    /// hex directories of the right length, a file name that sanitising leaves unchanged.
    /// Anything else (`..`, `/`, a dot file, a temporary file) is `None`, answered 404.
    pub fn parse(host: &str, user_dir: &str, random: &str, filename: &str) -> Option<Self> {
        let hexdigits = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let host_ok = !host.is_empty()
            && host.len() <= 1023
            && host
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
            && !host.starts_with('.');
        if !host_ok || !hexdigits(user_dir, USER_DIR_LEN) || !hexdigits(random, RANDOM_LEN) {
            return None;
        }
        if sanitise_filename(filename).ok().as_deref() != Some(filename) {
            return None;
        }
        Some(Self {
            host: host.to_owned(),
            user_dir: user_dir.to_owned(),
            random: random.to_owned(),
            filename: filename.to_owned(),
        })
    }

    /// The path the signature covers: `/<host>/<user>/<random>/<name>`, not encoded.
    pub fn signed_path(&self) -> String {
        format!(
            "/{}/{}/{}/{}",
            self.host, self.user_dir, self.random, self.filename
        )
    }

    /// The same path percent-encoded for a URL.
    pub fn url_path(&self) -> String {
        format!(
            "/{}/{}/{}/{}",
            percent_encode(&self.host),
            self.user_dir,
            self.random,
            percent_encode(&self.filename)
        )
    }
}

/// The query of a PUT URL: `size=N&expires=MS&sig=HEX`.
pub fn put_query(size: u64, expires_ms: i64, signature: &str) -> String {
    format!("size={size}&expires={expires_ms}&sig={signature}")
}

/// The signed fields of a PUT query, as sent back by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutQuery {
    /// Announced size.
    pub size: u64,
    /// Expiry, Unix milliseconds.
    pub expires_ms: i64,
    /// Hex signature.
    pub sig: String,
}

/// Parses a PUT URL's query; `None` if a field is missing, repeated or malformed.
pub fn parse_put_query(query: &str) -> Option<PutQuery> {
    let (mut size, mut expires, mut sig) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let slot = match key {
            "size" => &mut size,
            "expires" => &mut expires,
            "sig" => &mut sig,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    Some(PutQuery {
        size: size?.parse().ok()?,
        expires_ms: expires?.parse().ok()?,
        sig: sig?.to_owned(),
    })
}

/// Why a requested file name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFilename {
    /// Empty, or nothing left after removing directory parts.
    Empty,
    /// Holds control characters.
    Control,
}

/// Makes a requested file name one safe path segment: directory parts are dropped (`a/b.txt`
/// → `b.txt`), characters other than letters, digits and `.-_+~()` become `_`, a leading dot
/// becomes `_` (no hidden files, no `..`), and the name is cut to [`MAX_FILENAME_BYTES`]
/// keeping its extension. Control characters or an empty name are refused (`<bad-request/>`).
pub fn sanitise_filename(name: &str) -> Result<String, BadFilename> {
    if name.chars().any(char::is_control) {
        return Err(BadFilename::Control);
    }
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if base.is_empty() {
        return Err(BadFilename::Empty);
    }
    let mut out: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || ".-_+~()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.len() > MAX_FILENAME_BYTES {
        out = shorten(&out);
    }
    Ok(out)
}

/// Cuts `name` to [`MAX_FILENAME_BYTES`] on a character boundary, keeping a short extension.
fn shorten(name: &str) -> String {
    let ext = name
        .rfind('.')
        .map(|i| name.get(i..).unwrap_or_default())
        .filter(|e| e.len() <= 16)
        .unwrap_or_default();
    let mut stem_end = MAX_FILENAME_BYTES - ext.len();
    while !name.is_char_boundary(stem_end) {
        stem_end -= 1;
    }
    format!("{}{ext}", name.get(..stem_end).unwrap_or_default())
}

/// Percent-encodes everything but RFC 3986 unreserved characters (UTF-8 bytes).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a `Range` header asks of a file of `len` bytes (RFC 9110 §14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole file (an invalid or multi-range header is ignored,
    /// as §14.2 allows).
    Full,
    /// Bytes `start..=end`: 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the file is in the range: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range: `a-b`, `a-` or `-n` (the last n bytes).
pub fn parse_range(header: &str, len: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if first.trim().is_empty() {
        // `-n`: the last n bytes.
        return match number(last) {
            Some(n) if n > 0 && len > 0 => RangeRequest::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        };
    }
    let Some(start) = number(first) else {
        return RangeRequest::Full;
    };
    let end = if last.trim().is_empty() {
        None
    } else {
        match number(last) {
            Some(end) if end >= start => Some(end),
            // `5-2` or garbage: not a valid range, ignored.
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

/// The content type served for a file name, from its extension; `application/octet-stream`
/// when unknown. The type declared in the slot request is not used for serving: a client
/// could otherwise make us serve `text/html` from our origin.
pub fn content_type_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    CONTENT_TYPES
        .iter()
        .find(|(e, _)| *e == ext)
        .map_or("application/octet-stream", |(_, t)| t)
}

/// True if browsers may show this type in place; others are sent as attachments
/// (`Content-Disposition: attachment`), so nothing active (HTML, SVG) runs on our origin.
pub fn is_inline(content_type: &str) -> bool {
    let inline_prefix = ["image/", "audio/", "video/"];
    (inline_prefix.iter().any(|p| content_type.starts_with(p)) && content_type != "image/svg+xml")
        || content_type == "text/plain"
        || content_type == "application/pdf"
}

/// Extensions of what chat clients share, and their types.
const CONTENT_TYPES: &[(&str, &str)] = &[
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("png", "image/png"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("avif", "image/avif"),
    ("heic", "image/heic"),
    ("heif", "image/heif"),
    ("bmp", "image/bmp"),
    ("svg", "image/svg+xml"),
    ("ico", "image/vnd.microsoft.icon"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("mp3", "audio/mpeg"),
    ("m4a", "audio/mp4"),
    ("aac", "audio/aac"),
    ("ogg", "audio/ogg"),
    ("oga", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("flac", "audio/flac"),
    ("wav", "audio/wav"),
    ("weba", "audio/webm"),
    ("mp4", "video/mp4"),
    ("m4v", "video/mp4"),
    ("mov", "video/quicktime"),
    ("webm", "video/webm"),
    ("ogv", "video/ogg"),
    ("mkv", "video/x-matroska"),
    ("3gp", "video/3gpp"),
    ("txt", "text/plain"),
    ("log", "text/plain"),
    ("md", "text/markdown"),
    ("csv", "text/csv"),
    ("html", "text/html"),
    ("htm", "text/html"),
    ("css", "text/css"),
    ("js", "text/javascript"),
    ("json", "application/json"),
    ("xml", "application/xml"),
    ("pdf", "application/pdf"),
    ("zip", "application/zip"),
    ("gz", "application/gzip"),
    ("tar", "application/x-tar"),
    ("7z", "application/x-7z-compressed"),
    ("doc", "application/msword"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ("xls", "application/vnd.ms-excel"),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    ("odt", "application/vnd.oasis.opendocument.text"),
    ("apk", "application/vnd.android.package-archive"),
    ("vcf", "text/vcard"),
    ("ics", "text/calendar"),
    ("asc", "application/pgp-keys"),
];

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_field() {
        let key = SigningKey::derive(b"secret");
        let claim = PutClaim {
            path: "/h/u/r/f.txt",
            size: 10,
            content_type: "text/plain",
            expires_ms: 99,
        };
        let sig = key.sign(&claim);
        assert_eq!(sig.len(), 64);
        assert!(key.verify(&claim, &sig));
        assert!(!SigningKey::derive(b"other").verify(&claim, &sig));
        assert!(!key.verify(&PutClaim { size: 11, ..claim }, &sig));
        // Length prefixes: moving bytes between fields changes the signature.
        let shifted = PutClaim {
            path: "/h/u/r/f.tx",
            content_type: "ttext/plain",
            ..claim
        };
        assert!(!key.verify(&shifted, &sig));
        assert!(!key.verify(&claim, &sig.to_uppercase().replace('A', "B")));
        assert!(!key.verify(&claim, "abc"));
        assert!(!key.verify(&claim, "é"));
    }

    #[test]
    fn user_dirs_are_keyed_and_stable() {
        let key = SigningKey::derive(b"secret");
        let a = key.user_dir("alice@example.org");
        assert_eq!(a.len(), USER_DIR_LEN);
        assert_eq!(a, key.user_dir("alice@example.org"));
        assert_ne!(a, key.user_dir("bob@example.org"));
        assert_ne!(a, SigningKey::derive(b"x").user_dir("alice@example.org"));
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }

    #[test]
    fn file_names_are_sanitised() {
        let ok = |n: &str| sanitise_filename(n).unwrap();
        assert_eq!(ok("photo.jpg"), "photo.jpg");
        assert_eq!(ok("../../etc/passwd"), "passwd");
        assert_eq!(ok("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(ok(".."), "_.");
        assert_eq!(ok(".bashrc"), "_bashrc");
        assert_eq!(ok("my file?.txt"), "my_file_.txt");
        assert_eq!(ok("Фото 1.png"), "Фото_1.png");
        assert_eq!(ok("a<b>\"c\".html"), "a_b__c_.html");
        assert_eq!(sanitise_filename(""), Err(BadFilename::Empty));
        assert_eq!(sanitise_filename("dir/"), Err(BadFilename::Empty));
        assert_eq!(sanitise_filename("a\nb"), Err(BadFilename::Control));
        assert_eq!(sanitise_filename("a\0b"), Err(BadFilename::Control));
        let long = format!("{}.jpeg", "é".repeat(300));
        let cut = ok(&long);
        assert!(cut.len() <= MAX_FILENAME_BYTES);
        assert!(cut.ends_with(".jpeg"));
        // Sanitising is idempotent, which is what the handler checks names against.
        for name in ["photo.jpg", "_.", "Фото_1.png", cut.as_str()] {
            assert_eq!(ok(name), name);
        }
    }

    #[test]
    fn file_paths_refuse_anything_unexpected() {
        let hex32 = "0123456789abcdef0123456789abcdef";
        let p = FilePath::parse("example.org", hex32, hex32, "ä.txt").unwrap();
        assert_eq!(
            p.signed_path(),
            format!("/example.org/{hex32}/{hex32}/ä.txt")
        );
        assert_eq!(
            p.url_path(),
            format!("/example.org/{hex32}/{hex32}/%C3%A4.txt")
        );
        assert_eq!(
            FilePath::parse("example.org", hex32, hex32, "a b.txt"),
            None
        );
        for (host, user, random, file) in [
            ("..", hex32, hex32, "a.txt"),
            ("example.org", "..", hex32, "a.txt"),
            ("example.org", hex32, "0123", "a.txt"),
            ("example.org", hex32, &hex32.to_uppercase(), "a.txt"),
            ("example.org", hex32, hex32, ".."),
            ("example.org", hex32, hex32, ".a.txt.part"),
            ("example.org", hex32, hex32, "a/b"),
            ("example.org", hex32, hex32, ""),
            ("a/b", hex32, hex32, "a.txt"),
            ("", hex32, hex32, "a.txt"),
        ] {
            assert_eq!(
                FilePath::parse(host, user, random, file),
                None,
                "{host} {user} {random} {file}"
            );
        }
    }

    #[test]
    fn put_queries() {
        let q = parse_put_query(&put_query(5, 77, "ab")).unwrap();
        assert_eq!(
            q,
            PutQuery {
                size: 5,
                expires_ms: 77,
                sig: "ab".into()
            }
        );
        assert!(parse_put_query("size=5&expires=77&sig=ab&x=1").is_some());
        assert_eq!(parse_put_query("size=5&expires=77"), None);
        assert_eq!(parse_put_query("size=5&size=6&expires=77&sig=ab"), None);
        assert_eq!(parse_put_query("size=-1&expires=77&sig=ab"), None);
        assert_eq!(parse_put_query("size&expires=77&sig=ab"), None);
        assert_eq!(parse_put_query(""), None);
    }

    #[test]
    fn ranges() {
        use RangeRequest::{Full, Partial, Unsatisfiable};
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Full,
            "overflow is not a range"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("a.JPG"), "image/jpeg");
        assert_eq!(content_type_for("a.tar.gz"), "application/gzip");
        assert_eq!(content_type_for("README"), "application/octet-stream");
        assert_eq!(content_type_for("x.html"), "text/html");
        assert!(is_inline("image/png"));
        assert!(is_inline("video/mp4"));
        assert!(is_inline("text/plain"));
        assert!(!is_inline("image/svg+xml"), "scripts in SVG");
        assert!(!is_inline("text/html"));
        assert!(!is_inline("application/octet-stream"));
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a b/ä~.txt"), "a%20b%2F%C3%A4~.txt");
    }
}
