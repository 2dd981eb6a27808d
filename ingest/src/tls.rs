//! The rustls client setup for `mqtts://` brokers, client certificates included (AWS IoT on
//! port 8883 authenticates the client by its certificate).
//!
//! The crypto provider is ring, passed explicitly: rumqttc's own default setup relies on a
//! process-wide provider and on the platform's certificate store, and panics without them.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::MqttConfig;
use crate::error::Error;

/// Builds the TLS setup from `mqtt.ca_file`, `mqtt.client_cert_file` and `mqtt.client_key_file`.
pub(crate) fn client_config(cfg: &MqttConfig) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in read_certs("mqtt.ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_file("mqtt.ca_file", path, e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs("mqtt.client_cert_file", cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| tls_file("mqtt.client_key_file", key_path, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_file(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file(key, path, e))?;
    if certs.is_empty() {
        return Err(tls_file(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn tls_file(key: &'static str, path: &Path, message: impl ToString) -> Error {
    Error::TlsFile {
        key,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_roots_need_no_files() {
        let cfg = MqttConfig {
            url: "mqtts://example.com".into(),
            embedded: false,
            ..MqttConfig::default()
        };
        client_config(&cfg).unwrap();
    }

    #[test]
    fn missing_or_empty_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let cases = [
            (
                MqttConfig {
                    ca_file: Some(dir.path().join("missing.pem")),
                    ..MqttConfig::default()
                },
                "mqtt.ca_file",
            ),
            (
                MqttConfig {
                    ca_file: Some(empty.clone()),
                    ..MqttConfig::default()
                },
                "mqtt.ca_file",
            ),
            (
                MqttConfig {
                    client_cert_file: Some(empty.clone()),
                    client_key_file: Some(empty),
                    ..MqttConfig::default()
                },
                "mqtt.client_cert_file",
            ),
        ];
        for (cfg, expected) in cases {
            match client_config(&cfg) {
                Err(Error::TlsFile { key, .. }) => assert_eq!(key, expected),
                other => panic!("expected a TLS file error for {expected}, got {other:?}"),
            }
        }
    }
}
