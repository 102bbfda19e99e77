//! `[[service.backend]]`: one real server of a service.

use std::net::SocketAddr;

use super::{
    checks,
    diag::FieldPath,
    raw::{RawBackend, Spanned},
    validate::{Located, Reported, Validator},
    BackendConfig, Forwarding, Role, MAX_WEIGHT,
};

/// One backend, with where its address is; `None` when it has no usable address.
/// `vip` (when it is valid) and `forwarding` are its service's.
pub fn validate(
    v: &mut Validator<'_>,
    path: &FieldPath,
    raw: Spanned<RawBackend>,
    vip: Option<SocketAddr>,
    forwarding: Forwarding,
) -> Option<(BackendConfig, Located<SocketAddr>)> {
    let span = raw.span();
    let raw = raw.into_inner();
    v.unknown_keys(path, &raw.unknown, RawBackend::KEYS);

    let weight = v.int(
        &path.key("weight"),
        raw.weight,
        1,
        (0, MAX_WEIGHT.into()),
        &format!("a weight from 0 (no new flows) to {MAX_WEIGHT}"),
    );
    let role = v.choice(&path.key("role"), raw.role, &Role::CHOICES, Role::Primary);

    let address_path = path.key("address");
    let text = match v.read(&address_path, raw.address, "the real server's IP:port, e.g. address = \"198.18.1.11:80\"")
    {
        Ok(Some(text)) => text,
        Ok(None) => {
            v.report(
                &address_path,
                Some(span),
                "missing; expected the real server's IP:port, e.g. address = \"198.18.1.11:80\"",
            );
            return None;
        }
        Err(Reported) => return None,
    };
    let address = match checks::endpoint(text.get_ref(), "198.18.1.11:80") {
        Ok(address) => address,
        Err(why) => {
            v.report(&address_path, Some(text.span()), why);
            return None;
        }
    };
    if let Some(vip) = vip {
        if vip.is_ipv4() != address.is_ipv4() {
            let family = |a: SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
            v.report(
                &address_path,
                Some(text.span()),
                format!(
                    "{address} is {} but the VIP {vip} is {}; expected a backend of the VIP's address family",
                    family(address),
                    family(vip)
                ),
            );
        } else if forwarding.direct_return() && address.port() != vip.port() {
            let how = if forwarding == Forwarding::Dsr {
                "only the MAC address is rewritten"
            } else {
                "the packet travels unchanged inside the outer header"
            };
            v.report(
                &address_path,
                Some(text.span()),
                format!(
                    "port {} differs from the VIP port {}; with forwarding = \"{}\" {how}, so expected the backend to listen on port {}",
                    address.port(),
                    vip.port(),
                    forwarding.as_str(),
                    vip.port()
                ),
            );
        }
    }
    Some((BackendConfig { address, weight, role }, Located::new(address, address_path, text.span())))
}

#[cfg(test)]
mod tests {
    use crate::config::{
        parse,
        testing::{assert_one, edit},
        Role,
    };

    const ADDRESS: &str = "address = \"198.18.1.12:80\"";

    /// BASE with the second backend's address line replaced by `lines`.
    fn second(lines: &str) -> String {
        edit(ADDRESS, lines)
    }

    #[test]
    fn defaults_and_settings() {
        let text = second("address = \"198.18.1.12:80\"\nweight = 0\nrole = \"backup\"");
        let backends = &parse(&text, "t.toml").expect("valid").services[0].backends;
        assert_eq!((backends[0].weight, backends[0].role), (1, Role::Primary));
        assert_eq!((backends[1].weight, backends[1].role), (0, Role::Backup));
        assert_eq!(backends[1].id(), "198.18.1.12:80");
    }

    #[test]
    fn address() {
        let at = "service[0] (www).backend[1].address (line 13)";
        let cases = [
            ("address = \"198.18.1.12:0\"", "port 0"),
            ("address = \"[2001:db8::12]:80\"", "[2001:db8::12]:80 is IPv6 but the VIP 198.18.0.10:80 is IPv4; expected a backend of the VIP's address family"),
            ("address = \"224.0.0.1:80\"", "224.0.0.1 is not a unicast address"),
            ("address = \"backend-1:80\"", "\"backend-1:80\" is not an IP:port address (host names are not resolved); expected IP:port, e.g. \"198.18.1.11:80\""),
        ];
        for (line, message) in cases {
            assert_one(&second(line), at, message);
        }
        assert_one(
            &second("role = \"backup\""),
            "service[0] (www).backend[1].address (line 12)",
            "missing; expected the real server's IP:port",
        );
        assert_one(
            &second("address = 80"),
            "service[0] (www).backend[1].address (line 13, column 11)",
            "the integer 80 is not a string",
        );
    }

    #[test]
    fn dsr_needs_the_vip_port() {
        let text = edit("vip = \"198.18.0.10:80\"", "vip = \"198.18.0.10:80\"\nforwarding = \"dsr\"").replacen(
            "198.18.1.12:80",
            "198.18.1.12:8080",
            1,
        );
        assert_one(
            &text,
            "service[0] (www).backend[1].address (line 14)",
            "port 8080 differs from the VIP port 80; with forwarding = \"dsr\"",
        );
    }

    #[test]
    fn weight_and_role() {
        let with = |line: &str| second(&format!("{ADDRESS}\n{line}"));
        let cases = [
            (
                "weight = 10001",
                "service[0] (www).backend[1].weight (line 14)",
                "10001 is out of range; expected a weight from 0 (no new flows) to 10000",
            ),
            ("weight = -1", "service[0] (www).backend[1].weight (line 14)", "-1 is out of range"),
            (
                "weight = 1.5",
                "service[0] (www).backend[1].weight (line 14, column 10)",
                "the float 1.5 is not an integer; expected a weight from 0",
            ),
            (
                "weight = \"2\"",
                "service[0] (www).backend[1].weight (line 14, column 10)",
                "(write numbers without quotes: weight = 2)",
            ),
            (
                "role = \"master\"",
                "service[0] (www).backend[1].role (line 14)",
                "unknown value \"master\"; expected one of: primary, backup",
            ),
            (
                "wieght = 2",
                "service[0] (www).backend[1].wieght (line 14, column 1)",
                "unknown key `wieght` (did you mean `weight`?); expected one of: address, weight, role",
            ),
        ];
        for (line, field, message) in cases {
            assert_one(&with(line), field, message);
        }
    }

    #[test]
    fn inline_backends_are_read_like_tables() {
        let text = edit(
            "\n[[service.backend]]\naddress = \"198.18.1.11:80\"\n\n[[service.backend]]\naddress = \"198.18.1.12:80\"\n",
            "backend = [{ address = \"198.18.1.11:80\" }, { address = \"198.18.1.12:80\", role = 3 }, 4]\n",
        );
        let p = crate::config::testing::problems(&text);
        let got: Vec<String> = p.iter().map(|p| p.location()).collect();
        assert_eq!(
            got,
            ["service[0] (www).backend[1].role (line 8, column 81)", "service[0] (www).backend[2] (line 8, column 86)"],
            "{p:#?}"
        );
        assert!(p[1].message.contains("the integer 4 is not a table; expected a [[service.backend]] table"), "{p:#?}");
    }
}
