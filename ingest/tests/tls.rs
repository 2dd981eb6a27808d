//! `mqtts://` with client certificates (what AWS IoT on port 8883 asks for), against a
//! Mosquitto TLS listener that requires a client certificate. Certificates are made with the
//! `openssl` command line tool.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use ingest::{Error, MqttConfig, MqttSource};
use testkit::free_port;
use testkit::mosquitto::Mosquitto;

/// Shutdown normally takes milliseconds; the bound is only there to fail instead of hanging.
const GRACE: Duration = WAIT;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed; the TLS test needs it to make certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=ccstream-test-ca",
    ];
    args.extend(ec);
    args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "ccstream-client")] {
        let subj = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        let mut args = vec![
            "req",
            "-subj",
            subj.as_str(),
            "-keyout",
            key.as_str(),
            "-out",
            csr.as_str(),
        ];
        args.extend(ec);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

/// Mosquitto started as root drops to the `mosquitto` user: let it read the test's files.
fn readable_by_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    set(dir, 0o755).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        set(&entry.unwrap().path(), 0o644).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    readable_by_all(dir.path());
    let d = dir.path().display();
    let tls_port = free_port();
    // A plain listener for the test's publisher, a TLS one that demands a client certificate.
    let broker = Mosquitto::builder()
        .config(&format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
             keyfile {d}/server.key\nrequire_certificate true\n"
        ))
        .start();

    let cfg = MqttConfig {
        url: format!("mqtts://localhost:{tls_port}"),
        ca_file: Some(dir.path().join("ca.pem")),
        client_cert_file: Some(dir.path().join("client.pem")),
        client_key_file: Some(dir.path().join("client.key")),
        ..source_config(tls_port, &unique_id("tls"))
    };
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed over TLS", || status.is_subscribed()).await;
    publish(broker.port(), vec![shadow("secure-thing", "{}")]).await;
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item).0, "secure-thing");
    acker.ack(item.into_ack());
    handle.shutdown(GRACE).await.unwrap();

    // Without the client certificate the broker refuses the handshake: never connected.
    let no_cert = MqttConfig {
        client_cert_file: None,
        client_key_file: None,
        ..cfg.clone()
    };
    let (_rx, _acker, handle) = MqttSource::start(&no_cert, "test", "host").unwrap();
    let status = handle.status();
    // An accepted handshake would connect and never count a failure: the wait fails then.
    wait_until("the handshake without a certificate failed", || {
        status.connect_failures() > 0
    })
    .await;
    assert!(!handle.is_connected());
    handle.shutdown(GRACE).await.unwrap();

    // A key that does not belong to the certificate is refused at start.
    let wrong_key = MqttConfig {
        client_key_file: Some(dir.path().join("server.key")),
        ..cfg
    };
    match MqttSource::start(&wrong_key, "test", "host") {
        Err(Error::Tls(_)) => {}
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("a mismatched key was accepted"),
    }
}
