//! Outbound HTTP for guests: the requests an app sends through `wasi:http`, each checked
//! against the app's allow-list where it connects ([`policy`]), and sent by wasm-gw's own
//! client, to exactly the authority that was checked.

pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use self::policy::{Denied, Policy, Scheme};

/// What one app's outbound requests may take.
#[derive(Clone, Debug)]
pub struct Limits {
    /// DNS, TCP and TLS.
    pub connect: Duration,
    /// From the request to its response's head, unless the request asks for less.
    pub first_byte: Duration,
    /// Between bytes of the response's body.
    pub idle: Duration,
    pub max_concurrent: usize,
    pub max_response: u64,
    /// The app's requests open now, its instances' together.
    pub open: Arc<AtomicUsize>,
}

/// What one app's outbound requests go through.
pub struct Outbound {
    pub app: Arc<str>,
    pub policy: Arc<Policy>,
    pub tls: Arc<rustls::ClientConfig>,
    pub limits: Limits,
}

/// One of an app's open outbound requests, counted until its response body ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn take(limits: &Limits) -> Option<Open> {
        let taken = limits
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limits.max_concurrent).then_some(open + 1)
            })
            .is_ok();
        taken.then(|| Open(limits.open.clone()))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body held to the app's limits: `max` bytes in all, `idle` between frames.
struct Limited {
    inner: hyper::body::Incoming,
    seen: u64,
    max: u64,
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether the timer runs for the current wait: it starts when the guest asks for the
    /// next frame, so a guest slow to read is no idle upstream.
    waiting: bool,
    _open: Open,
}

/// `idle` from now, or as far as the clock goes.
fn idle_deadline(idle: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(idle)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl http_body::Body for Limited {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if !this.waiting {
            this.waiting = true;
            let deadline = idle_deadline(this.idle);
            this.timer.as_mut().reset(deadline);
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.max {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                            this.seen,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Error::Hyper(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// The TLS client every app's `https` requests use: the Mozilla roots (`webpki-roots`), and
/// the certificates in `extra_ca` (PEM), if given, beside them. Certificates are always
/// verified.
pub fn tls_client(extra_ca: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let mut added = 0;
        for certificate in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("--outbound-ca {}: cannot read it", path.display()))?
        {
            let certificate = certificate.with_context(|| {
                format!("--outbound-ca {}: not PEM certificates", path.display())
            })?;
            roots.add(certificate).with_context(|| {
                format!(
                    "--outbound-ca {}: a certificate is unusable",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!("--outbound-ca {}: holds no certificate", path.display());
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Sent = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl wasmtime_wasi_http::WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _done: Sent,
    ) -> Box<dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, Sent)>> + Send>
    {
        let app = self.app.clone();
        let policy = self.policy.clone();
        let tls = self.tls.clone();
        let limits = self.limits.clone();
        Box::new(async move {
            let started = std::time::Instant::now();
            let mut destination = "-".to_owned();
            let sent = send(
                &app,
                &policy,
                &tls,
                &limits,
                request,
                options,
                &mut destination,
            )
            .await;
            let outcome = match &sent {
                Ok(_) => "ok",
                Err(Error::HttpRequestDenied) => "denied",
                Err(_) => "failed",
            };
            crate::metrics::metrics().outbound(&app, destination, outcome, started.elapsed());
            sent
        })
    }
}

/// Sends `request` if `policy` allows it, to the authority its URI names and no other.
async fn send(
    app: &str,
    policy: &Policy,
    tls: &Arc<rustls::ClientConfig>,
    limits: &Limits,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    destination: &mut String,
) -> wasmtime_wasi_http::Result<(http::Response<WasiBody>, Sent)> {
    let uri = request.uri().clone();
    // Logged as scheme://host:port: a query or user may hold a secret.
    let target = format!(
        "{}://{}:{}",
        uri.scheme_str().unwrap_or("?"),
        uri.host().unwrap_or("?"),
        uri.port_u16()
            .map_or_else(|| "default".to_owned(), |port| port.to_string())
    );
    let denied = |why: &dyn std::fmt::Display| {
        tracing::warn!(app, target = %target, "denied an outbound HTTP request: {why}");
        Error::HttpRequestDenied
    };
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err(denied(&"the scheme is not http or https")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| denied(&"the request names no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let allowed = policy
        .check(scheme, authority.host(), port)
        .map_err(|why| denied(&why))?;
    *destination = allowed.label();
    let Some(open) = Open::take(limits) else {
        tracing::warn!(
            app,
            target = %target,
            "an outbound HTTP request failed: the app has {} open already (--outbound-max-concurrent)",
            limits.max_concurrent
        );
        return Err(Error::ConnectionLimitReached);
    };
    let options = options.unwrap_or_default();
    let connect = options
        .connect_timeout
        .map_or(limits.connect, |asked| asked.min(limits.connect));
    let first_byte = options
        .first_byte_timeout
        .map_or(limits.first_byte, |asked| asked.min(limits.first_byte));
    let idle = options
        .between_bytes_timeout
        .map_or(limits.idle, |asked| asked.min(limits.idle));

    // An address is connected to as it is, never looked up (`10.0.0.1.` is no name).
    let resolved: Vec<std::net::SocketAddr> = match allowed.literal() {
        Some(address) => vec![std::net::SocketAddr::new(address, port)],
        None => tokio::time::timeout(connect, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| Error::DnsTimeout)?
            .map_err(|error| Error::DnsError {
                rcode: Some(error.to_string()),
                info_code: None,
            })?
            .collect(),
    };
    let mut refusal: Option<Denied> = None;
    let mut address = None;
    for candidate in resolved {
        match allowed.address(candidate) {
            Ok(()) => {
                address = Some(candidate);
                break;
            }
            Err(why) => {
                refusal.get_or_insert(why);
            }
        }
    }
    let Some(address) = address else {
        return Err(match refusal {
            Some(why) => denied(&why),
            None => Error::DestinationNotFound,
        });
    };
    let stream = tokio::time::timeout(connect, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(|_| Error::ConnectionRefused)?;
    let driven = match scheme {
        Scheme::Http => handshake(stream, connect).await?,
        Scheme::Https => {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            let stream = tokio::time::timeout(connect, connector.connect(name, stream))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|error| {
                    tracing::warn!(app, target = %target, "outbound TLS failed: {error}");
                    Error::TlsCertificateError
                })?;
            handshake(stream, connect).await?
        }
    };
    let (mut sender, driven) = driven;

    // Origin form, and a Host that is the authority checked: nothing in the request can
    // send it elsewhere.
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    // The host and port, never a user the URL may carry.
    let host_header = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    let host_header =
        http::HeaderValue::from_str(&host_header).map_err(|_| Error::HttpRequestUriInvalid)?;
    request
        .headers_mut()
        .insert(http::header::HOST, host_header);

    let response = tokio::time::timeout(first_byte, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::Hyper)?;
    let response = response.map(|inner| {
        Limited {
            inner,
            seen: 0,
            max: limits.max_response,
            idle,
            timer: Box::pin(tokio::time::sleep_until(idle_deadline(idle))),
            waiting: false,
            _open: open,
        }
        .boxed_unsync()
    });
    let sent: Sent = Box::new(async move {
        match driven.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Hyper(error)),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    });
    Ok((response, sent))
}

/// An HTTP/1.1 client connection over `stream`, and the task that drives it.
async fn handshake<S>(
    stream: S,
    limit: Duration,
) -> wasmtime_wasi_http::Result<(
    hyper::client::conn::http1::SendRequest<WasiBody>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = tokio::time::timeout(
        limit,
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Hyper)?;
    Ok((sender, tokio::spawn(connection)))
}
