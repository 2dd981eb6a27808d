//! The SSRF guard: which destination addresses a tenant's webhook may reach.
//!
//! Two checks share one policy. [`check_url_now`] tells the tenant at rule CREATE/UPDATE time
//! what can be known without DNS (scheme, IP-literal hosts, `localhost` names). At send time the
//! dispatcher checks IP-literal hosts itself (reqwest does not resolve them) and every host name
//! goes through [`GuardedResolver`](super::GuardedResolver), which checks every resolved address
//! and hands reqwest only checked ones, so the connection goes to the address that was judged
//! (no second lookup for a rebinding DNS server to answer differently).
//!
//! Refused by default, unless allowed (see [`SsrfPolicy`]): the ranges of the IANA IPv4 and IPv6
//! Special-Purpose Address Registries that are not globally reachable, multicast, broadcast and
//! 240.0.0.0/4, each named by a [`Reason`]. An IPv6 address that carries an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by that IPv4
//! address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// Why an address is refused: the special range it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16.
    Private,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10 (deprecated, still routed privately by some networks).
    SiteLocal,
    /// 169.254.0.0/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// 0.0.0.0, :: (many stacks connect these to the local host).
    Unspecified,
    /// 0.0.0.0/8 other than 0.0.0.0.
    ThisNetwork,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// 255.255.255.255.
    Broadcast,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 240.0.0.0/4 (reserved for future use).
    Reserved,
    /// Documentation only, never routed: 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24
    /// (TEST-NET-1/2/3, RFC 5737), 2001:db8::/32 (RFC 3849), 3fff::/20 (RFC 9637).
    Documentation,
    /// Benchmarking only: 198.18.0.0/15 (RFC 2544), 2001:2::/48 (RFC 5180).
    Benchmarking,
    /// IETF protocol assignments: 192.0.0.0/24 (RFC 6890) and 2001::/23 (RFC 2928), which holds
    /// Teredo 2001::/32 (RFC 4380) and the deprecated ORCHID 2001:10::/28 (RFC 4843). The blocks
    /// in them that the registry marks globally reachable pass: 192.0.0.9 (PCP anycast,
    /// RFC 7723), 192.0.0.10 (TURN anycast, RFC 8155), 2001:1::1 and 2001:1::2 (the same two
    /// services), 2001:3::/32 (AMT, RFC 7450), 2001:4:112::/48 (AS112-v6, RFC 7535),
    /// 2001:20::/28 (ORCHIDv2, RFC 7343) and 2001:30::/28 (drone DETs, RFC 9374).
    ProtocolAssignment,
    /// 192.88.99.0/24, the deprecated 6to4 relay anycast prefix (RFC 7526).
    Deprecated6to4Relay,
    /// 64:ff9b:1::/48, local-use IPv4/IPv6 translation (RFC 8215). How it carries an IPv4
    /// address is up to the local translator, so the whole prefix is refused.
    LocalTranslation,
    /// 100::/64, discard-only (RFC 6666), and 100:0:0:1::/64, the dummy prefix (RFC 9780):
    /// neither leads to a real host.
    DiscardOnly,
    /// 5f00::/16, SRv6 segment identifiers (RFC 9602).
    Srv6,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Loopback => "a loopback address",
            Reason::Private => "a private (RFC 1918) address",
            Reason::UniqueLocal => "a unique local (fc00::/7) address",
            Reason::SiteLocal => "a site-local (fec0::/10) address",
            Reason::LinkLocal => "a link-local address",
            Reason::Unspecified => "the unspecified address",
            Reason::ThisNetwork => "a 'this network' (0.0.0.0/8) address",
            Reason::SharedCgnat => "a carrier-grade NAT (100.64.0.0/10) address",
            Reason::Broadcast => "the broadcast address",
            Reason::Multicast => "a multicast address",
            Reason::Reserved => "a reserved (240.0.0.0/4) address",
            Reason::Documentation => {
                "a documentation (TEST-NET / 2001:db8::/32 / 3fff::/20) address"
            }
            Reason::Benchmarking => "a benchmarking (198.18.0.0/15, 2001:2::/48) address",
            Reason::ProtocolAssignment => {
                "an IETF protocol assignment (192.0.0.0/24, 2001::/23) address"
            }
            Reason::Deprecated6to4Relay => {
                "a deprecated 6to4 relay anycast (192.88.99.0/24) address"
            }
            Reason::LocalTranslation => {
                "a local-use IPv4/IPv6 translation (64:ff9b:1::/48) address"
            }
            Reason::DiscardOnly => "a discard-only or dummy (100::/63) address",
            Reason::Srv6 => "an SRv6 segment identifier (5f00::/16) address",
        })
    }
}

const HOW_TO_ALLOW: &str = "set webhook.allow_private or webhook.allow_cidrs to allow it";

/// Why a webhook destination is refused. The message is meant for the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The URL does not parse or has no host.
    #[error("webhook url {url} is not a valid URL: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// A scheme other than http or https.
    #[error("webhook url {url} uses the {scheme} scheme; only http and https are allowed")]
    Scheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// An IP-literal host in a refused range.
    #[error("webhook url {url} points to {reason}; {HOW_TO_ALLOW}")]
    Address {
        /// The URL as given.
        url: String,
        /// The address in the URL.
        ip: IpAddr,
        /// The range it lies in.
        reason: Reason,
    },
    /// `localhost` or a name below `.localhost` (RFC 6761: always the local host).
    #[error("webhook url {url} names the local host ({host}), a loopback address; {HOW_TO_ALLOW}")]
    LocalName {
        /// The URL as given.
        url: String,
        /// The host name.
        host: String,
    },
    /// A host name with a resolved address in a refused range (the whole name is refused).
    #[error("webhook host {host} resolves to {ip}, {reason}; {HOW_TO_ALLOW}")]
    Resolved {
        /// The host name.
        host: String,
        /// The refused address it resolved to.
        ip: IpAddr,
        /// The range that address lies in.
        reason: Reason,
    },
}

/// What the guard allows: nothing special unless `allow_private`, or the address is in `allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsrfPolicy {
    allow_private: bool,
    allow: Vec<IpNet>,
}

impl SsrfPolicy {
    /// A policy; `allow_private` allows every address, `allow` allows those ranges.
    pub fn new(allow_private: bool, allow: Vec<IpNet>) -> Self {
        Self {
            allow_private,
            allow: allow.into_iter().map(|net| net.trunc()).collect(),
        }
    }

    /// The default: refuse every special range.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Everything allowed (the guard off).
    pub fn allow_all() -> Self {
        Self::new(true, Vec::new())
    }

    /// Why `ip` is refused under this policy, or `None` when it may be reached.
    ///
    /// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`)
    /// and 6to4 (`2002::/16`) addresses are judged by the IPv4 address they carry.
    pub fn is_refused(&self, ip: IpAddr) -> Option<Reason> {
        if self.allow_private {
            return None;
        }
        let canonical = embedded_ipv4(ip).map_or(ip, IpAddr::V4);
        let reason = special_range(canonical)?;
        let allowed = self
            .allow
            .iter()
            .any(|net| net.contains(&canonical) || net.contains(&ip));
        (!allowed).then_some(reason)
    }
}

/// Parses one `allow_cidrs` entry: `a.b.c.d/n`, `x::y/n`, or a bare address (a /32 or /128).
pub fn parse_cidr(entry: &str) -> Result<IpNet, String> {
    let text = entry.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{entry:?} is not a CIDR (expected e.g. \"10.0.0.0/8\", \"fd00::/8\" or a single address)"
    ))
}

/// The special range `ip` lies in, if any (no policy applied, no IPv4 unwrapping).
pub fn special_range(ip: IpAddr) -> Option<Reason> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<Reason> {
    let [a, b, c, d] = ip.octets();
    if ip.is_unspecified() {
        Some(Reason::Unspecified)
    } else if a == 0 {
        Some(Reason::ThisNetwork)
    } else if ip.is_loopback() {
        Some(Reason::Loopback)
    } else if ip.is_private() {
        Some(Reason::Private)
    } else if ip.is_link_local() {
        Some(Reason::LinkLocal)
    } else if a == 100 && (b & 0xc0) == 64 {
        Some(Reason::SharedCgnat)
    } else if ip.is_broadcast() {
        Some(Reason::Broadcast)
    } else if ip.is_multicast() {
        Some(Reason::Multicast)
    } else if a >= 240 {
        Some(Reason::Reserved)
    } else if ip.is_documentation() {
        Some(Reason::Documentation)
    } else if a == 198 && (b & 0xfe) == 18 {
        Some(Reason::Benchmarking)
    } else if (a, b, c) == (192, 0, 0) && !matches!(d, 9 | 10) {
        Some(Reason::ProtocolAssignment)
    } else if (a, b, c) == (192, 88, 99) {
        Some(Reason::Deprecated6to4Relay)
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<Reason> {
    let s = ip.segments();
    let first = s[0];
    if ip.is_unspecified() {
        Some(Reason::Unspecified)
    } else if ip.is_loopback() {
        Some(Reason::Loopback)
    } else if first & 0xfe00 == 0xfc00 {
        Some(Reason::UniqueLocal)
    } else if first & 0xffc0 == 0xfe80 {
        Some(Reason::LinkLocal)
    } else if first & 0xffc0 == 0xfec0 {
        Some(Reason::SiteLocal)
    } else if first & 0xff00 == 0xff00 {
        Some(Reason::Multicast)
    } else if s[..3] == [0x64, 0xff9b, 1] {
        Some(Reason::LocalTranslation)
    } else if s[..3] == [0x100, 0, 0] && s[3] <= 1 {
        Some(Reason::DiscardOnly)
    } else if s[..2] == [0x2001, 0xdb8] || (first == 0x3fff && s[1] < 0x1000) {
        Some(Reason::Documentation)
    } else if s[..3] == [0x2001, 2, 0] {
        Some(Reason::Benchmarking)
    } else if first == 0x2001 && s[1] < 0x200 && !global_in_2001_23(ip) {
        Some(Reason::ProtocolAssignment)
    } else if first == 0x5f00 {
        Some(Reason::Srv6)
    } else {
        None
    }
}

/// The blocks in 2001::/23 that the IANA registry marks globally reachable.
fn global_in_2001_23(ip: Ipv6Addr) -> bool {
    match ip.segments() {
        // PCP anycast 2001:1::1 (RFC 7723), TURN anycast 2001:1::2 (RFC 8155), DNS-SD SRP
        // anycast 2001:1::3 (RFC 9665).
        [0x2001, 1, 0, 0, 0, 0, 0, last] => matches!(last, 1..=3),
        // AMT 2001:3::/32 (RFC 7450).
        [0x2001, 3, ..] => true,
        // AS112-v6 2001:4:112::/48 (RFC 7535).
        [0x2001, 4, 0x112, ..] => true,
        // ORCHIDv2 2001:20::/28 (RFC 7343), drone DETs 2001:30::/28 (RFC 9374).
        [0x2001, second, ..] => (0x20..=0x3f).contains(&second),
        _ => false,
    }
}

/// The IPv4 address an IPv6 address stands for, where it stands for one.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-compatible `::a.b.c.d` (RFC 4291 2.5.5.1, deprecated but still routed by some
    // stacks); `::` and `::1` are IPv6's own unspecified and loopback addresses.
    if s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(low);
    }
    // NAT64 well-known prefix (RFC 6052): a gateway forwards it to the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    // 6to4 (RFC 3056): `2002:AABB:CCDD::/48` is the site behind the IPv4 address AA.BB.CC.DD
    // (bits 16..48), which a relay tunnels the packet to.
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// What can be known about a webhook URL at rule CREATE/UPDATE time, without DNS: the scheme,
/// an IP-literal host (decimal, octal and hex IPv4 forms are normalized by the URL parser first)
/// and `localhost` names. A URL whose scheme or host holds a `${...}` template variable is
/// checked only as far as it is fixed; the rest is checked at send time.
pub fn check_url_now(url: &str, policy: &SsrfPolicy) -> Result<(), Refusal> {
    let url = url.trim();
    if url.contains("${") {
        return check_templated(url, policy);
    }
    let parsed = Url::parse(url).map_err(|e| Refusal::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    check_scheme(url, &parsed)?;
    check_host(url, &parsed, policy, true)
}

/// The send-time check of a filled URL that reqwest will not resolve through the guarded
/// resolver: the scheme and an IP-literal host. Host names are judged by the resolver, on the
/// addresses they actually resolve to.
pub(crate) fn check_before_send(url: &Url, policy: &SsrfPolicy) -> Result<(), Refusal> {
    check_scheme(url.as_str(), url)?;
    check_host(url.as_str(), url, policy, false)
}

fn check_templated(url: &str, policy: &SsrfPolicy) -> Result<(), Refusal> {
    // The whole URL, or its scheme, comes from a variable: nothing is fixed yet.
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(());
    };
    if scheme.contains("${") {
        return Ok(());
    }
    let scheme_lower = scheme.to_ascii_lowercase();
    if !matches!(scheme_lower.as_str(), "http" | "https") {
        return Err(Refusal::Scheme {
            url: url.to_owned(),
            scheme: scheme_lower,
        });
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if host_port.contains("${") {
        // Checked at send time, when the host is known.
        return Ok(());
    }
    let fixed = format!("{scheme}://{host_port}/");
    let parsed = Url::parse(&fixed).map_err(|e| Refusal::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    check_scheme(url, &parsed)?;
    check_host(url, &parsed, policy, true)
}

fn check_scheme(original: &str, url: &Url) -> Result<(), Refusal> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(Refusal::Scheme {
            url: original.to_owned(),
            scheme: other.to_owned(),
        }),
    }
}

fn check_host(
    original: &str,
    url: &Url,
    policy: &SsrfPolicy,
    judge_names: bool,
) -> Result<(), Refusal> {
    let refused = |ip: IpAddr| {
        policy.is_refused(ip).map(|reason| Refusal::Address {
            url: original.to_owned(),
            ip,
            reason,
        })
    };
    match url.host() {
        None => Err(Refusal::InvalidUrl {
            url: original.to_owned(),
            reason: "no host".to_owned(),
        }),
        Some(Host::Ipv4(ip)) => refused(IpAddr::V4(ip)).map_or(Ok(()), Err),
        Some(Host::Ipv6(ip)) => refused(IpAddr::V6(ip)).map_or(Ok(()), Err),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let local = name == "localhost" || name.ends_with(".localhost");
            // Judged as the IPv4 loopback it resolves to; the resolver judges the real answer.
            if judge_names && local && policy.is_refused(IpAddr::V4(Ipv4Addr::LOCALHOST)).is_some()
            {
                Err(Refusal::LocalName {
                    url: original.to_owned(),
                    host: name,
                })
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
