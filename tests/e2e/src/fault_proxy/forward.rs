//! The request path: TLS setup, rule evaluation, forwarding to the API server, the kill trigger,
//! response streaming.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::rules::{Action, FaultRule, RequestPredicate, RequestRecord, RuleId, status_json};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// Run when the k-th counted write got its answer from the API server.
pub(crate) struct WriteTrigger {
    pub after: usize,
    pub seen: usize,
    /// Count only the writes the API server accepted (2xx).
    pub accepted_only: bool,
    pub action: Arc<dyn Fn() + Send + Sync>,
}

pub(crate) struct RuleEntry {
    pub id: RuleId,
    pub rule: FaultRule,
    pub hits: usize,
}

pub(crate) struct State {
    pub log: Vec<RequestRecord>,
    pub rules: Vec<RuleEntry>,
    pub next_rule_id: u64,
    pub write_filter: RequestPredicate,
    pub trigger: Option<WriteTrigger>,
    pub crash_points: Vec<RequestRecord>,
}

/// Everything the connection tasks share with the [`super::FaultProxy`] handle.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Bumped whenever rules are removed, so hanging requests re-check their rule.
    pub rules_changed: watch::Sender<u64>,
    pub upstream: Upstream,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, seq: u64, f: impl FnOnce(&mut RequestRecord)) {
        if let Some(r) = self.lock().log.get_mut(seq as usize - 1) {
            f(r);
        }
    }
}

/// The real API server and the two ways of reaching it.
pub(crate) struct Upstream {
    pub uri: Uri,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// Presents the admin client certificate.
    admin: tokio_rustls::TlsConnector,
    /// No client certificate: the request's own `Authorization` header authenticates.
    anonymous: tokio_rustls::TlsConnector,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("parsing {}", path.display()))
}

/// TLS server config presenting the API server's own serving certificate (HTTP/1.1 only).
pub(crate) fn server_tls(pki: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(read_certs(&pki.join("apiserver.crt"))?, read_key(&pki.join("apiserver.key"))?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl Upstream {
    pub fn new(uri: Uri, pki: &Path) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&pki.join("ca.crt"))? {
            roots.add(cert)?;
        }
        let builder = || {
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots.clone()))
        };
        let mut admin =
            builder()?.with_client_auth_cert(read_certs(&pki.join("admin.crt"))?, read_key(&pki.join("admin.key"))?)?;
        let mut anonymous = builder()?.with_no_client_auth();
        admin.alpn_protocols = vec![b"http/1.1".to_vec()];
        anonymous.alpn_protocols = admin.alpn_protocols.clone();
        let host = uri.host().ok_or_else(|| anyhow!("no host in {uri}"))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(443);
        Ok(Upstream {
            server_name: ServerName::try_from(host.clone())?,
            host,
            port,
            uri,
            admin: Arc::new(admin).into(),
            anonymous: Arc::new(anonymous).into(),
        })
    }

    /// One request on a fresh connection (no pooling: simple, and a dropped client connection
    /// never leaves a half-used upstream one behind).
    async fn send(&self, req: Request<Full<Bytes>>, admin: bool) -> anyhow::Result<Response<Incoming>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let connector = if admin { &self.admin } else { &self.anonymous };
        let tls = connector.connect(self.server_name.clone(), tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }
}

/// The proxy's answer when it closes the connection instead of answering.
#[derive(Debug)]
pub(crate) struct Dropped(&'static str);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault proxy dropped the connection ({})", self.0)
    }
}

impl std::error::Error for Dropped {}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn json_response(status: u16, body: String, retry_after: Option<u32>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Headers that describe one hop, not the message.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in
        [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, header::TE, header::PROXY_AUTHORIZATION]
    {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Relay the body, holding each frame until `delay` after it arrived; a reader task keeps
/// pulling from upstream meanwhile, so delays do not add up.
fn delayed(body: Incoming, delay: Duration) -> ProxyBody {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let end = frame.is_err();
            if tx.send((tokio::time::Instant::now() + delay, frame)).is_err() || end {
                break;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let (at, frame) = rx.recv().await?;
        tokio::time::sleep_until(at).await;
        Some((frame.map_err(|e| Box::new(e) as BoxError), rx))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Serve one request from a client.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, BoxError> {
    let path = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.to_string());
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authorization = req.headers().contains_key(header::AUTHORIZATION);
    let record = {
        let mut state = shared.lock();
        let mut record =
            RequestRecord::new(state.log.len() as u64 + 1, req.method().as_str(), &path, user_agent, authorization);
        record.counted_write = record.mutating && (state.write_filter)(&record);
        state.log.push(record.clone());
        record
    };
    let seq = record.seq;

    // Rules: first match with hits left wins. A hang re-evaluates once its rule is gone.
    let mut changes = shared.rules_changed.subscribe();
    let mut delay = None;
    loop {
        let hit = {
            let mut state = shared.lock();
            state
                .rules
                .iter_mut()
                .find(|e| e.rule.max_hits.is_none_or(|m| e.hits < m) && e.rule.matcher.matches(&record))
                .map(|e| {
                    e.hits += 1;
                    (e.id, e.rule.action.clone())
                })
        };
        let Some((id, action)) = hit else { break };
        shared.update(seq, |r| r.fault = Some(action.label()));
        match action {
            Action::Status { code, retry_after } => {
                shared.update(seq, |r| r.status = Some(code));
                let body = status_json(code, &format!("injected by the fault proxy (HTTP {code})"));
                return Ok(json_response(code, body.to_string(), retry_after));
            }
            Action::WatchExpired => {
                shared.update(seq, |r| r.status = Some(200));
                let status = status_json(410, "too old resource version: injected by the fault proxy");
                let event = serde_json::json!({"type": "ERROR", "object": status});
                return Ok(json_response(200, format!("{event}\n"), None));
            }
            Action::Drop => return Err(Dropped("drop rule").into()),
            Action::Delay(d) => {
                delay = Some(d);
                break;
            }
            Action::Hang => {
                while shared.lock().rules.iter().any(|e| e.id == id) {
                    if changes.changed().await.is_err() {
                        return Err(Dropped("proxy stopped").into());
                    }
                }
            }
        }
    }

    // Forward.
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut upstream_req = Request::new(Full::new(body));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = path.parse()?;
    *upstream_req.headers_mut() = parts.headers;
    strip_hop_by_hop(upstream_req.headers_mut());
    if let Some(authority) = shared.upstream.uri.authority() {
        upstream_req.headers_mut().insert(header::HOST, HeaderValue::from_str(authority.as_str())?);
    }
    let resp = match shared.upstream.send(upstream_req, !authorization).await {
        Ok(resp) => resp,
        Err(e) => {
            let message = format!("upstream error: {e:#}");
            shared.update(seq, |r| (r.status, r.fault) = (Some(502), Some(message.clone())));
            return Ok(json_response(502, status_json(502, &message).to_string(), None));
        }
    };
    let status = resp.status().as_u16();

    // Count the write and maybe fire the trigger, before the client sees the answer.
    let fire = {
        let mut state = shared.lock();
        let idx = seq as usize - 1;
        state.log[idx].status = Some(status);
        let mut fire = None;
        if record.counted_write
            && let Some(trigger) = state.trigger.as_mut()
            && (!trigger.accepted_only || (200..300).contains(&status))
        {
            trigger.seen += 1;
            if trigger.seen >= trigger.after {
                fire = state.trigger.take().map(|t| t.action);
                state.log[idx].fault = Some("kill-after-write".into());
                let point = state.log[idx].clone();
                state.crash_points.push(point);
            }
        }
        fire
    };
    if let Some(action) = fire {
        action();
        return Err(Dropped("kill after write").into());
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = match delay {
        Some(d) => delayed(body, d),
        None => body.map_err(|e| Box::new(e) as BoxError).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}
