//! `ccstream healthcheck [--ready]`: the probe a container runtime runs inside an image that has
//! no curl (ECS, Docker `HEALTHCHECK`). It asks the service's own listener, as configured in
//! `api.listen`, for `/healthz` (or `/readyz`) and reports 200 as healthy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot ask {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// The address to ask for a listener bound to `listen`: a wildcard address is reached through
/// the loopback address of its family.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs `path` of the listener at `listen`; `Ok` with the body on 200.
pub async fn probe(
    listen: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let url = format!("http://{}{path}", local_address(listen));
    let unreachable = |source| ProbeError::Unreachable {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(unreachable)?;
    if status == 200 {
        Ok(body)
    } else {
        Err(ProbeError::Status {
            url,
            status,
            body: body.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::local_address;

    #[test]
    fn wildcard_listeners_are_asked_on_loopback() {
        let at = |s: &str| local_address(s.parse().expect("address")).to_string();
        assert_eq!(at("0.0.0.0:8088"), "127.0.0.1:8088");
        assert_eq!(at("[::]:8088"), "[::1]:8088");
        assert_eq!(at("10.0.0.5:9000"), "10.0.0.5:9000");
    }
}
