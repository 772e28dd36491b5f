//! TLS on the listeners: the certificate and key (`--certfile`, `--keyfile`), client
//! certificates (`--ca-certs`, `--cert-reqs`), and swapping them in while serving.
//!
//! Each new connection takes the configuration current when it was accepted; a reload
//! builds a whole new one from the files and swaps it in only if it is good, so a bad new
//! pair costs no handshake: the old one keeps serving, and the log says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Whether clients must show a certificate (`--cert-reqs`, Gunicorn's, which takes the
/// `ssl` module's numbers too: 0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertReqs {
    None,
    Optional,
    Required,
}

impl std::str::FromStr for CertReqs {
    type Err = String;

    fn from_str(text: &str) -> Result<CertReqs, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "0" => Ok(CertReqs::None),
            "optional" | "1" => Ok(CertReqs::Optional),
            "required" | "2" => Ok(CertReqs::Required),
            _ => Err(format!(
                "{text:?} is not none, optional or required (or 0, 1, 2)"
            )),
        }
    }
}

/// Where the TLS settings come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub ca_certs: Option<PathBuf>,
    pub cert_reqs: CertReqs,
}

/// The TLS configuration new connections get, reloadable.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; fails, naming the file and what is wrong with it, if any is bad.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let config = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again and serves the new certificate to new connections; if they
    /// are not a good pair, keeps the old one and says why.
    pub fn reload(&self, why: &str) {
        match build(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                tracing::info!(
                    "reloaded the TLS certificate {} ({why}): new connections get it",
                    self.files.certfile.display()
                );
            }
            Err(error) => {
                tracing::error!("TLS reload failed, the old certificate keeps serving: {error:#}")
            }
        }
    }

    /// A server session for a new connection.
    pub fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ServerConnection::new(config)
    }

    /// The files that make up the configuration, for `--reload` to watch.
    pub fn files(&self) -> Vec<PathBuf> {
        let TlsFiles {
            certfile,
            keyfile,
            ca_certs,
            ..
        } = &self.files;
        [Some(certfile), Some(keyfile), ca_certs.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration from `files`: TLS 1.2 and 1.3, ALPN `http/1.1`.
fn build(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let chain = certificates(&files.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&files.keyfile)
        .map_err(|error| anyhow::anyhow!("{}: {error}", files.keyfile.display()))
        .with_context(|| format!("cannot read the key in {}", files.keyfile.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?;
    let builder = match (&files.ca_certs, files.cert_reqs) {
        (_, CertReqs::None) => builder.with_no_client_auth(),
        (None, _) => anyhow::bail!("--cert-reqs optional or required needs --ca-certs"),
        (Some(ca_certs), reqs) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca_certs)? {
                roots.add(certificate).with_context(|| {
                    format!("{}: a certificate is not a valid CA", ca_certs.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
            let verifier = match reqs {
                CertReqs::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(
                verifier.build().with_context(|| {
                    format!("cannot verify clients with {}", ca_certs.display())
                })?,
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{} and {} are not a certificate and its key",
            files.certfile.display(),
            files.keyfile.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in the PEM file at `path`, at least one.
fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            anyhow::anyhow!("cannot read certificates from {}: {error}", path.display())
        })?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(chain)
}

/// What the app learns of a connection's TLS: mod_ssl's variable names, which WSGI servers
/// behind Apache pass on and apps already read.
#[derive(Clone, Debug, Default)]
pub struct TlsFacts {
    /// `SSL_PROTOCOL`: `TLSv1.3`, `TLSv1.2`.
    pub protocol: String,
    /// `SSL_CIPHER`, as IANA names the suite.
    pub cipher: String,
    /// `SSL_CLIENT_S_DN`: the verified client certificate's subject, RFC 4514 (`CN=alice,
    /// O=Example`, the most specific part first), if the client showed one.
    pub client_subject: Option<String>,
}

impl TlsFacts {
    /// The facts of `session`, whose handshake is done.
    pub fn of(session: &ServerConnection) -> TlsFacts {
        let protocol = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        };
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or_default();
        let client_subject = session
            .peer_certificates()
            .and_then(<[CertificateDer]>::first)
            .and_then(|certificate| subject(certificate));
        TlsFacts {
            protocol: protocol.to_owned(),
            cipher: cipher.to_owned(),
            client_subject,
        }
    }

    /// As CGI variables, for the environ.
    pub fn variables(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let verify = match self.client_subject {
            Some(_) => "SUCCESS",
            None => "NONE",
        };
        [
            ("HTTPS", "on"),
            ("SSL_PROTOCOL", self.protocol.as_str()),
            ("SSL_CIPHER", self.cipher.as_str()),
            ("SSL_CLIENT_VERIFY", verify),
        ]
        .into_iter()
        .chain(
            self.client_subject
                .as_deref()
                .map(|subject| ("SSL_CLIENT_S_DN", subject)),
        )
    }
}

/// A certificate's subject as RFC 4514 writes a distinguished name: the last RDN first,
/// attributes by their short names where they have one, special characters escaped.
fn subject(certificate: &CertificateDer) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = parsed
        .subject()
        .iter_rdn()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let name = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = match attribute.as_str() {
                        Ok(text) => escape_dn_value(text),
                        // RFC 4514 §2.4: a value of no string type, as `#` and its DER in hex.
                        Err(_) => {
                            let der = attribute.attr_value().as_bytes();
                            let hex: String =
                                der.iter().map(|byte| format!("{byte:02x}")).collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{name}={value}")
                })
                .collect();
            parts.join("+")
        })
        .collect();
    Some(rdns.into_iter().rev().collect::<Vec<_>>().join(","))
}

/// RFC 4514 §2.4's escapes for an attribute value.
fn escape_dn_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (index == 0 && matches!(c, ' ' | '#'))
            || (index == last && c == ' ');
        if c == '\0' {
            escaped.push_str("\\00");
        } else {
            if special {
                escaped.push('\\');
            }
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_reqs_take_names_and_numbers() {
        assert_eq!("none".parse(), Ok(CertReqs::None));
        assert_eq!("0".parse(), Ok(CertReqs::None));
        assert_eq!("Optional".parse(), Ok(CertReqs::Optional));
        assert_eq!("2".parse(), Ok(CertReqs::Required));
        assert!("3".parse::<CertReqs>().is_err());
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("Example, Inc."), "Example\\, Inc.");
        assert_eq!(escape_dn_value("#1 "), "\\#1\\ ");
        assert_eq!(escape_dn_value("a+b=c"), "a\\+b=c");
        assert_eq!(escape_dn_value("plain"), "plain");
    }

    #[test]
    fn a_subject_reads_most_specific_first() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Without rcgen's default common name, which would come first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "NL");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        assert_eq!(
            subject(certificate.der()).as_deref(),
            Some("CN=alice,O=Example\\, Inc.,C=NL")
        );
    }
}
