//! The `mod_http_upload` request handler: the HTTP side of XEP-0363 (§5, §6). The slots are
//! handed out over XMPP by `starling_modules::http_upload`, whose [`slot`] rules (paths,
//! signatures, names, ranges) and [`UploadSettings`] this handler uses, so both sides agree by
//! construction.
//!
//! Routes, under the handler's path: `/<host>/<user dir>/<random>/<file name>`.
//!
//! - `PUT` with a valid `?size&expires&sig` stores the file: signature wrong or missing, or the
//!   slot expired → 403; announced size over `max_size` or over the user's quota, or a body
//!   longer than the slot → 413; a body shorter than the slot → 400; the file already exists
//!   → 409; stored → 201. The body is streamed to a temporary file in the slot's directory and
//!   linked to its name once complete, so a reader never sees half a file and two PUTs of the
//!   same slot cannot both win.
//! - `GET`/`HEAD` serve the file with a content type from its extension, `nosniff`, a CSP
//!   that forbids active content, `Content-Disposition: attachment` for types a browser should
//!   not render in place, and single `Range` requests (206, 416).
//! - `OPTIONS` answers CORS preflights; every answer carries `Access-Control-Allow-Origin: *`
//!   and the module's `custom_headers`.
//! - Anything that is not a well-formed path of a host running the module → 404, so path
//!   traversal (`..`, encoded slashes, dot files) finds nothing.
//!
//! Files older than `max_days` are swept hourly by a task this handler starts (one per
//! listener mounting it), which ends once the node is gone.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use starling_config::Config;
use starling_core::Server;
use starling_modules::http_upload::slot::{self, FilePath, PutClaim, RangeRequest};
use starling_modules::http_upload::{UploadSettings, disk, now_ms};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// How often expired files are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Bytes read from disk per chunk of a download.
const CHUNK: usize = 64 * 1024;

/// The routes of a `mod_http_upload` handler, relative to its mount path.
pub fn routes(server: Arc<Server>) -> Router {
    tokio::spawn(sweep_loop(Arc::downgrade(&server)));
    let state = Upload {
        server,
        cache: Arc::new(Mutex::new(Cache::default())),
    };
    Router::new()
        .route(
            "/{host}/{user}/{random}/{file}",
            get(get_file).put(put_file).options(preflight),
        )
        .with_state(state)
}

#[derive(Clone)]
struct Upload {
    server: Arc<Server>,
    cache: Arc<Mutex<Cache>>,
}

/// Settings per host for one config snapshot (resolving reads the secret file).
#[derive(Default)]
struct Cache {
    config: Option<Arc<Config>>,
    hosts: HashMap<String, Option<Arc<UploadSettings>>>,
}

impl Upload {
    /// The settings of `host`, if it is ours and runs the module.
    fn settings(&self, host: &str) -> Option<Arc<UploadSettings>> {
        let config = self.server.config();
        // Only configured hosts are cached, so URLs cannot grow the cache.
        if !config.hosts.iter().any(|h| h == host) {
            return None;
        }
        {
            let cache = lock(&self.cache);
            if cache
                .config
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &config))
                && let Some(found) = cache.hosts.get(host)
            {
                return found.clone();
            }
        }
        let resolved = match UploadSettings::for_host(&config, host)? {
            Ok(settings) => Some(Arc::new(settings)),
            Err(e) => {
                tracing::error!(%host, error = %e, "mod_http_upload cannot serve");
                None
            }
        };
        let mut cache = lock(&self.cache);
        if !cache
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &config))
        {
            *cache = Cache {
                config: Some(config),
                hosts: HashMap::new(),
            };
        }
        cache.hosts.insert(host.to_owned(), resolved.clone());
        resolved
    }

    /// The file a URL names, with its host's settings; `None` answers 404.
    fn locate(
        &self,
        segments: Option<UrlPath<(String, String, String, String)>>,
    ) -> Option<(FilePath, Arc<UploadSettings>)> {
        let UrlPath((host, user, random, file)) = segments?;
        let path = FilePath::parse(&host, &user, &random, &file)?;
        let settings = self.settings(&path.host)?;
        Some((path, settings))
    }
}

fn lock(cache: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    // A panic while holding the lock leaves a cache that is still consistent.
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Segments =
    Result<UrlPath<(String, String, String, String)>, axum::extract::rejection::PathRejection>;

async fn put_file(
    State(upload): State<Upload>,
    segments: Segments,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((file, settings)) = upload.locate(segments.ok()) else {
        return plain(StatusCode::NOT_FOUND, "not found", None);
    };
    let s = Some(&*settings);
    match store(&file, &settings, query.as_deref(), &headers, body).await {
        Ok(()) => plain(StatusCode::CREATED, "stored", s),
        Err((status, why)) => {
            tracing::debug!(host = %file.host, %status, why, "upload refused");
            plain(status, why, s)
        }
    }
}

type Refused = (StatusCode, &'static str);

/// Checks the slot, then streams the body to disk.
async fn store(
    file: &FilePath,
    settings: &UploadSettings,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), Refused> {
    let forbidden = (StatusCode::FORBIDDEN, "missing or invalid signature");
    let q = query.and_then(slot::parse_put_query).ok_or(forbidden)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    let signed_path = file.signed_path();
    let claim = |content_type| PutClaim {
        path: &signed_path,
        size: q.size,
        content_type,
        expires_ms: q.expires_ms,
    };
    // A slot requested without a content type was signed with an empty one and takes any.
    if !settings.key.verify(&claim(content_type), &q.sig)
        && !settings.key.verify(&claim(""), &q.sig)
    {
        return Err(forbidden);
    }
    if now_ms() >= q.expires_ms {
        return Err((StatusCode::FORBIDDEN, "upload slot expired"));
    }
    let too_large = (StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot");
    if q.size > settings.max_size {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "larger than max_size"));
    }
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or((StatusCode::BAD_REQUEST, "invalid Content-Length"))?;
        if length > q.size {
            return Err(too_large);
        }
        if length < q.size {
            return Err((StatusCode::BAD_REQUEST, "smaller than the slot"));
        }
    }
    let target = settings.file_on_disk(file);
    if tokio::fs::symlink_metadata(&target).await.is_ok() {
        return Err((StatusCode::CONFLICT, "file exists"));
    }
    let internal = (StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file");
    if let Some(quota) = settings.quota {
        let dir = settings.docroot.join(&file.user_dir);
        let used = tokio::task::spawn_blocking(move || disk::usage(&dir))
            .await
            .map_err(|_| internal)?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read upload usage");
                internal
            })?;
        if used.saturating_add(q.size) > quota {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "quota exceeded"));
        }
    }
    let dir = target.parent().ok_or(internal)?;
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create upload directory");
        internal
    })?;
    // A leading dot: never a served name (names are sanitised), so never visible half-done.
    let temp = TempFile(dir.join(format!(
        ".{}.{}.part",
        file.filename,
        slot::hex(&rand::random::<[u8; 8]>())
    )));
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.0)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot create upload file");
            internal
        })?;
    let mut received = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| (StatusCode::BAD_REQUEST, "upload interrupted"))?;
        received = received.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        if received > q.size {
            return Err(too_large);
        }
        out.write_all(&chunk).await.map_err(|e| {
            tracing::error!(error = %e, "cannot write upload file");
            internal
        })?;
    }
    if received < q.size {
        return Err((StatusCode::BAD_REQUEST, "smaller than the slot"));
    }
    out.sync_all().await.map_err(|_| internal)?;
    drop(out);
    // hard_link fails if the name exists: of two PUTs racing on one slot, one wins.
    match tokio::fs::hard_link(&temp.0, &target).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err((StatusCode::CONFLICT, "file exists"))
        }
        // File systems without hard links: rename (the existence check above stands).
        Err(_) => tokio::fs::rename(&temp.0, &target)
            .await
            .map_err(|_| internal),
    }
}

/// Removes an upload's temporary file however the upload ends (refused, failed, aborted by
/// the client dropping the request, or linked to its name).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn get_file(
    State(upload): State<Upload>,
    method: Method,
    segments: Segments,
    headers: HeaderMap,
) -> Response {
    let Some((file, settings)) = upload.locate(segments.ok()) else {
        return plain(StatusCode::NOT_FOUND, "not found", None);
    };
    let s = Some(&*settings);
    let target = settings.file_on_disk(&file);
    // symlink_metadata: a link planted in the docroot is not followed.
    let len = match tokio::fs::symlink_metadata(&target).await {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return plain(StatusCode::NOT_FOUND, "not found", s),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeRequest::Full, |r| slot::parse_range(r, len));
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut response = plain(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
                s,
            );
            set(
                &mut response,
                header::CONTENT_RANGE,
                &format!("bytes */{len}"),
            );
            return response;
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        match open_at(&target, start).await {
            Ok(f) => Body::from_stream(read_chunks(f, count)),
            Err(_) => return plain(StatusCode::NOT_FOUND, "not found", s),
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let content_type = slot::content_type_for(&file.filename);
    set(&mut response, header::CONTENT_TYPE, content_type);
    set(&mut response, header::CONTENT_LENGTH, &count.to_string());
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    let disposition = if slot::is_inline(content_type) {
        "inline"
    } else {
        "attachment"
    };
    set(
        &mut response,
        header::CONTENT_DISPOSITION,
        &format!(
            "{disposition}; filename*=UTF-8''{}",
            slot::percent_encode(&file.filename)
        ),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut response,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    finish(response, s)
}

async fn open_at(path: &Path, start: u64) -> std::io::Result<tokio::fs::File> {
    let mut f = tokio::fs::File::open(path).await?;
    if start > 0 {
        f.seek(SeekFrom::Start(start)).await?;
    }
    Ok(f)
}

/// Streams `count` bytes of `file` in chunks of at most [`CHUNK`], never the whole file.
fn read_chunks(
    file: tokio::fs::File,
    count: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send {
    futures_util::stream::unfold((file, count), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            // The file shrank under us: stop (the client sees a short body).
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                let left = left.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
                Some((Ok(buf), (file, left)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}

/// CORS preflight (browser clients PUT from their own origin).
async fn preflight(State(upload): State<Upload>, segments: Segments) -> Response {
    let settings = upload.locate(segments.ok()).map(|(_, s)| s);
    let mut response = StatusCode::NO_CONTENT.into_response();
    set(&mut response, header::ACCESS_CONTROL_MAX_AGE, "86400");
    finish(response, settings.as_deref())
}

/// A short text answer.
fn plain(status: StatusCode, text: &'static str, settings: Option<&UploadSettings>) -> Response {
    let mut response = (status, text).into_response();
    set(
        &mut response,
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8",
    );
    finish(response, settings)
}

/// Adds the headers every answer carries: CORS, the protective ones, `custom_headers`.
fn finish(mut response: Response, settings: Option<&UploadSettings>) -> Response {
    set(&mut response, header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    set(
        &mut response,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, HEAD, PUT, OPTIONS",
    );
    set(
        &mut response,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        "Authorization, Content-Type",
    );
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        &mut response,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    );
    for (name, value) in settings.map_or(&[][..], |s| &s.custom_headers[..]) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn set(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// Sweeps files older than each host's `max_days`, hourly, while the node lives.
async fn sweep_loop(server: Weak<Server>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(config) = server.upgrade().map(|s| s.config()) else {
            return;
        };
        for host in &config.hosts {
            let Some(Ok(settings)) = UploadSettings::for_host(&config, host) else {
                continue;
            };
            let Some(age) = settings.max_age else {
                continue;
            };
            let Some(cutoff) = SystemTime::now().checked_sub(age) else {
                continue;
            };
            let docroot = settings.docroot.clone();
            match tokio::task::spawn_blocking(move || disk::sweep(&docroot, cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(%host, files = n, "expired uploads removed"),
                Ok(Err(e)) => tracing::warn!(%host, error = %e, "upload sweep failed"),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_carries_cors_and_custom_headers() {
        let response = plain(StatusCode::NOT_FOUND, "not found", None);
        let h = response.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            h[header::ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .unwrap()
                .contains("PUT")
        );
    }

    #[tokio::test]
    async fn downloads_are_streamed_in_bounded_chunks() {
        let dir = std::env::temp_dir().join(format!(
            "starling-upload-test-{}",
            slot::hex(&rand::random::<[u8; 8]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = open_at(&path, 10).await.unwrap();
        let chunks: Vec<Vec<u8>> = read_chunks(file, 150_000)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert!(chunks.iter().all(|c| c.len() <= CHUNK));
        assert_eq!(chunks.concat(), data[10..150_010]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
