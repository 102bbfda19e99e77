//! Pure field checks: a value in, the value it stands for or what is wrong with it out.
//!
//! Each message names the value and says what is expected; the caller adds the field.

use std::net::{IpAddr, SocketAddr};

use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

use super::{DEFAULT_METRICS, MAX_IFNAME_LEN, MAX_NAME_LEN, MIN_TABLE_SIZE};
use crate::maglev::is_prime;

/// Parses `IP:port` (IPv6 in brackets) for one host, explaining what is wrong otherwise.
pub fn endpoint(text: &str, example: &str) -> Result<SocketAddr, String> {
    let expected = format!("expected IP:port, e.g. \"{example}\" or \"[2001:db8::10]:80\"");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return unicast(addr);
    }
    if text.trim() != text && text.trim().parse::<SocketAddr>().is_ok() {
        return Err(format!("\"{text}\" has spaces around it; {expected}"));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        let with_port = SocketAddr::new(ip, 80);
        let note = if ip.is_ipv6() { " (an IPv6 address takes brackets when a port follows)" } else { "" };
        return Err(format!("\"{text}\" has no port; expected IP:port, e.g. \"{with_port}\"{note}"));
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        let host_ok = host.parse::<IpAddr>().is_ok()
            || host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|h| h.parse::<IpAddr>().is_ok());
        if host_ok {
            return Err(format!("\"{text}\": \"{port}\" is not a port; expected a port from 1 to 65535"));
        }
    }
    Err(format!("\"{text}\" is not an IP:port address (host names are not resolved); {expected}"))
}

/// An address xlb can send to: a port, one host, no zone.
fn unicast(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err(format!("port 0 in \"{addr}\"; expected a port from 1 to 65535"));
    }
    if let SocketAddr::V6(v6) = addr {
        if v6.scope_id() != 0 {
            return Err(format!("\"{addr}\" has a zone index; expected a global IPv6 address without %zone"));
        }
    }
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!("{ip} is not a unicast address; expected the address of one host"));
    }
    Ok(addr)
}

/// The metrics endpoint: an `IP:port` to listen on, or `""` for none.
pub fn metrics(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        format!(
            "\"{text}\" is not an IP:port address; expected e.g. \"{DEFAULT_METRICS}\", or \"\" to turn metrics off"
        )
    })
}

pub fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name; expected a name such as \"eth0\"".to_owned());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!("interface name \"{name}\" is longer than {MAX_IFNAME_LEN} bytes, the kernel's limit"));
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) || name == "." || name == ".."
    {
        return Err(format!("\"{name}\" is not a valid interface name; expected a name such as \"eth0\""));
    }
    Ok(())
}

pub fn service_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(valid) {
        return Err(format!(
            "{name:?} is not a valid service name; expected 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// A Maglev table size: a prime in range. (Whether it is large enough for
/// the service's backends is the service's check.)
pub fn table_size(value: i128) -> Result<u32, String> {
    let default = lb_common::DEFAULT_TABLE_SIZE;
    let max = lb_common::MAX_TABLE_SIZE;
    let Some(size) = u32::try_from(value).ok().filter(|n| (MIN_TABLE_SIZE..=max).contains(n)) else {
        return Err(format!(
            "{value} is out of range; expected a prime from {MIN_TABLE_SIZE} to {max} (default {default})"
        ));
    };
    if !is_prime(size) {
        let below = (MIN_TABLE_SIZE..size).rev().find(|&n| is_prime(n));
        let above = (size..=max).find(|&n| is_prime(n));
        let near: Vec<String> = below.into_iter().chain(above).map(|n| n.to_string()).collect();
        return Err(format!(
            "{size} is not prime; Maglev needs a prime table size (nearest: {}; default {default})",
            near.join(" or ")
        ));
    }
    Ok(size)
}

/// The path an HTTP check requests.
pub fn http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("\"{path}\" does not start with '/'; expected an HTTP path such as \"/\" or \"/healthz\""));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{path:?} contains spaces or control characters; expected an HTTP path (percent-encode them)"
        ));
    }
    Ok(())
}

/// The Host header an HTTP check sends.
pub fn http_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{host:?} is not a valid Host header value; expected e.g. \"www.example.org\", or leave it out"
        ));
    }
    Ok(())
}

/// A health check's `ca_file`: an absolute path to a readable PEM file of certificates.
pub fn ca_file(path: &std::path::Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "\"{}\" is not an absolute path; expected e.g. \"/etc/xlb/backend-ca.pem\"",
            path.display()
        ));
    }
    read_ca_file(path).map(drop)
}

/// The certificates of a PEM file; an error says what is wrong with it.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no certificate; expected PEM \"-----BEGIN CERTIFICATE-----\" blocks"));
    }
    Ok(certs)
}

/// The name a TLS check sends (SNI) and wants the certificate to be valid
/// for: `host` without a `:port`.
pub fn tls_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(strip_port(host).to_owned())
        .map_err(|_| format!("\"{host}\" is not a DNS name or an IP address a certificate can be checked for"))
}

/// `www.example.org:8443` → `www.example.org`; `[2001:db8::1]:443` → `2001:db8::1`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The value named `text` among `choices`; otherwise what is wrong, with a
/// hint when only its case or surrounding spaces differ.
pub fn choice<T: Copy>(text: &str, choices: &[(&'static str, T)]) -> Result<T, String> {
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
        return Ok(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let hint = match choices.iter().find(|(name, _)| name.eq_ignore_ascii_case(text.trim())) {
        Some((name, _)) => format!(" (did you mean \"{name}\"?)"),
        None => String::new(),
    };
    Err(format!("unknown value \"{text}\"{hint}; expected one of: {}", names.join(", ")))
}

/// `ADDRESS/LEN` of the family (`v4`): the address with its host bits cleared
/// is what the prefix means; host bits set are refused (a typo is likelier).
pub fn prefix(text: &str, v4: bool) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, len) = text.split_once('/').ok_or_else(|| format!("{text:?} has no /LEN"))?;
    let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if v4 { 32 } else { 128 };
    if addr.is_ipv4() != v4 {
        return Err(format!("{addr} is not an {} address", if v4 { "IPv4" } else { "IPv6" }));
    }
    let len: u8 = len
        .trim()
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("{len:?} is not a prefix length 0 to {max}"))?;
    let host_bits_set = match addr {
        std::net::IpAddr::V4(a) => len < 32 && u32::from(a) & (u32::MAX >> len) != 0,
        std::net::IpAddr::V6(a) => len < 128 && u128::from(a) & (u128::MAX >> len) != 0,
    };
    if host_bits_set {
        return Err(format!("{text} has host bits set"));
    }
    if addr.is_unspecified() {
        return Err(format!("{text} is unspecified; outer packets need a real source"));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused<T: std::fmt::Debug>(result: Result<T, String>, want: &str) {
        match result {
            Ok(v) => panic!("expected a refusal saying {want:?}, got Ok({v:?})"),
            Err(message) => assert!(message.contains(want), "expected {want:?} in {message:?}"),
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("198.18.0.10:80", "x"), Ok("198.18.0.10:80".parse().unwrap()));
        assert_eq!(endpoint("[2001:db8::10]:443", "x"), Ok("[2001:db8::10]:443".parse().unwrap()));
        refused(endpoint("198.18.0.10", "x"), "\"198.18.0.10\" has no port; expected IP:port, e.g. \"198.18.0.10:80\"");
        refused(endpoint("2001:db8::10:80", "x"), "an IPv6 address takes brackets when a port follows");
        refused(endpoint("2001:db8::10::80", "x"), "is not an IP:port address");
        refused(endpoint("198.18.0.10:0", "x"), "port 0 in \"198.18.0.10:0\"");
        refused(endpoint("198.18.0.10:http", "x"), "\"http\" is not a port");
        refused(endpoint("www.example.org:80", "e.g."), "is not an IP:port address (host names are not resolved)");
        refused(endpoint("backend-1:80", "198.18.1.11:80"), "e.g. \"198.18.1.11:80\"");
        refused(endpoint(" 198.18.0.10:80", "x"), "has spaces around it");
        refused(endpoint("[fe80::1%2]:80", "x"), "has a zone index");
        refused(endpoint("224.0.0.1:80", "x"), "224.0.0.1 is not a unicast address");
        refused(endpoint("255.255.255.255:80", "x"), "not a unicast address");
        refused(endpoint("0.0.0.0:80", "x"), "not a unicast address");
    }

    #[test]
    fn metrics_address() {
        assert_eq!(metrics(""), Ok(None));
        assert_eq!(metrics("127.0.0.1:9477"), Ok(Some("127.0.0.1:9477".parse().unwrap())));
        refused(metrics("localhost"), "\"localhost\" is not an IP:port address; expected e.g. \"127.0.0.1:9477\"");
    }

    #[test]
    fn interface_names() {
        assert_eq!(interface_name("eth0"), Ok(()));
        refused(interface_name(""), "empty interface name");
        refused(interface_name("eth0123456789abcdef"), "longer than 15 bytes");
        refused(interface_name("eth/0"), "not a valid interface name");
        refused(interface_name(".."), "not a valid interface name");
    }

    #[test]
    fn service_names() {
        assert_eq!(service_name("www-1.a_b"), Ok(()));
        refused(service_name("w w"), "\"w w\" is not a valid service name");
        refused(service_name(""), "not a valid service name");
        refused(service_name(&"x".repeat(65)), "not a valid service name");
    }

    #[test]
    fn table_sizes() {
        assert_eq!(table_size(65537), Ok(65537));
        assert_eq!(table_size(7), Ok(7));
        refused(table_size(65536), "65536 is not prime; Maglev needs a prime table size (nearest: 65521 or 65537");
        refused(table_size(100), "100 is not prime");
        refused(table_size(5), "5 is out of range; expected a prime from 7 to");
        refused(table_size(2_000_003), "out of range");
        refused(table_size(-1), "out of range");
    }

    #[test]
    fn http_fields() {
        assert_eq!(http_path("/healthz"), Ok(()));
        refused(http_path("healthz"), "does not start with '/'");
        refused(http_path("/a b"), "contains spaces or control characters");
        assert_eq!(http_host("www.example.org"), Ok(()));
        refused(http_host(""), "not a valid Host header value");
    }

    #[test]
    fn choices() {
        let choices = [("tcp", 1), ("udp", 2)];
        assert_eq!(choice("udp", &choices), Ok(2));
        refused(choice("sctp", &choices), "unknown value \"sctp\"; expected one of: tcp, udp");
        refused(choice("TCP", &choices), "unknown value \"TCP\" (did you mean \"tcp\"?); expected one of: tcp, udp");
        refused(choice(" udp", &choices), "(did you mean \"udp\"?)");
    }

    #[test]
    fn prefixes() {
        assert_eq!(super::prefix("198.18.5.0/24", true), Ok(("198.18.5.0".parse().unwrap(), 24)));
        assert_eq!(super::prefix("2001:db8:5::/64", false), Ok(("2001:db8:5::".parse().unwrap(), 64)));
        assert_eq!(super::prefix("198.18.5.9/32", true), Ok(("198.18.5.9".parse().unwrap(), 32)));
        for (text, v4, why) in [
            ("198.18.5.1/24", true, "host bits set"),
            ("198.18.5.0", true, "no /LEN"),
            ("198.18.5.0/33", true, "not a prefix length"),
            ("2001:db8::/64", true, "not an IPv4 address"),
            ("0.0.0.0/0", true, "unspecified"),
        ] {
            let err = super::prefix(text, v4).expect_err(text);
            assert!(err.contains(why), "{text}: error {err:?}, expected it to say {why:?}");
        }
    }
}
