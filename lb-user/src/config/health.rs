//! `[service.health]`: how backends are checked.

use super::{
    checks,
    diag::FieldPath,
    raw::{Item, RawHealth},
    validate::Validator,
    CheckKind, HealthConfig,
};

pub fn validate(v: &mut Validator<'_>, path: &FieldPath, raw: Option<Item<RawHealth>>) -> HealthConfig {
    let defaults = HealthConfig::default();
    let Ok(Some(raw)) = v.table(path, raw) else { return defaults };
    let raw = raw.into_inner();
    v.unknown_keys(path, &raw.unknown, RawHealth::KEYS);

    let check = v.choice(&path.key("check"), raw.check, &CheckKind::CHOICES, defaults.check);

    let path_path = path.key("path");
    let http_path = match v.read(&path_path, raw.path, "an HTTP path such as \"/\" or \"/healthz\"") {
        Ok(Some(text)) => {
            if let Err(why) = checks::http_path(text.get_ref()) {
                v.report(&path_path, Some(text.span()), why);
            }
            text.into_inner()
        }
        _ => defaults.path,
    };

    let host_path = path.key("host");
    let host = match v.read(&host_path, raw.host, "a Host header value, e.g. \"www.example.org\", or leave it out") {
        Ok(Some(text)) => {
            if let Err(why) = checks::http_host(text.get_ref()) {
                v.report(&host_path, Some(text.span()), why);
            }
            Some(text.into_inner())
        }
        _ => None,
    };

    let ca_path = path.key("ca_file");
    let ca_file = match v.read(&ca_path, raw.ca_file, "the absolute path of a PEM file of CA certificates") {
        Ok(Some(text)) => {
            let span = Some(text.span());
            let file = std::path::PathBuf::from(text.into_inner());
            if !check.uses_tls() {
                v.report(
                    &ca_path,
                    span,
                    format!(
                        "ca_file is for check = \"tls\" or \"https\", not \"{}\"; remove it or change check",
                        check.as_str()
                    ),
                );
            } else if let Err(why) = checks::ca_file(&file) {
                v.report(&ca_path, span, why);
            }
            Some(file)
        }
        _ => None,
    };
    if check.uses_tls() {
        if let Some(host) = &host {
            if let Err(why) = checks::tls_name(host) {
                v.report(
                    &host_path,
                    None,
                    format!(
                        "{why}; for check = \"{}\" host is the name the backend's certificate must be valid for",
                        check.as_str()
                    ),
                );
            }
        }
    }

    let expect_status = v.int(
        &path.key("expect_status"),
        raw.expect_status,
        defaults.expect_status,
        (100, 599),
        "an HTTP status from 100 to 599",
    );
    let interval_ms: u64 = v.int(
        &path.key("interval_ms"),
        raw.interval_ms,
        defaults.interval_ms,
        (1, 3_600_000),
        "milliseconds between checks, 1 to 3600000",
    );
    let timeout_path = path.key("timeout_ms");
    let timeout_span = raw.timeout_ms.as_ref().map(|t| t.span());
    let timeout_ms: u64 = v.int(
        &timeout_path,
        raw.timeout_ms,
        defaults.timeout_ms,
        (1, 3_600_000),
        "milliseconds, 1 to 3600000, no more than interval_ms",
    );
    if timeout_ms > interval_ms {
        v.report(
            &timeout_path,
            timeout_span,
            format!("timeout_ms ({timeout_ms}) is greater than interval_ms ({interval_ms}); expected a timeout no longer than the interval between checks"),
        );
    }
    let rise = v.int(
        &path.key("rise"),
        raw.rise,
        defaults.rise,
        (1, 1000),
        "the number of passed checks that bring a backend up, 1 to 1000",
    );
    let fall = v.int(
        &path.key("fall"),
        raw.fall,
        defaults.fall,
        (1, 1000),
        "the number of failed checks that take a backend down, 1 to 1000",
    );
    HealthConfig { check, path: http_path, host, ca_file, expect_status, interval_ms, timeout_ms, rise, fall }
}

#[cfg(test)]
mod tests {
    use crate::config::{
        parse,
        testing::{assert_one, BASE},
        CheckKind, HealthConfig,
    };

    /// BASE with a [service.health] after the backends (it belongs to the last [[service]]), on line 15.
    fn with(lines: &str) -> String {
        format!("{BASE}\n[service.health]\n{lines}\n")
    }

    #[test]
    fn defaults_and_settings() {
        let config = parse(BASE, "t.toml").expect("valid");
        assert_eq!(config.services[0].health, HealthConfig::default());
        let text = with("check = \"http\"\npath = \"/healthz\"\nhost = \"www.example.org\"\nrise = 1");
        let health = &parse(&text, "t.toml").expect("valid").services[0].health;
        assert_eq!(
            (health.check, health.path.as_str(), health.host.as_deref()),
            (CheckKind::Http, "/healthz", Some("www.example.org"))
        );
        assert_eq!((health.rise, health.fall), (1, 3));
    }

    #[test]
    fn tls_checks() {
        let text = with("check = \"https\"\nhost = \"www.foobar.com\"");
        let health = &parse(&text, "t.toml").expect("valid").services[0].health;
        assert_eq!(
            (health.check, health.host.as_deref(), health.ca_file.as_ref()),
            (CheckKind::Https, Some("www.foobar.com"), None)
        );
        assert!(health.check.uses_tls());
        let text = with("check = \"tls\"");
        assert_eq!(parse(&text, "t.toml").expect("valid").services[0].health.check, CheckKind::Tls);
    }

    #[test]
    fn bad_values() {
        let cases = [
            ("interval_ms = 0", "service[0] (www).health.interval_ms (line 16)", "0 is out of range; expected milliseconds between checks"),
            ("timeout_ms = 0", "service[0] (www).health.timeout_ms", "out of range"),
            ("timeout_ms = 2000", "service[0] (www).health.timeout_ms (line 16)", "timeout_ms (2000) is greater than interval_ms (1000)"),
            ("interval_ms = 1000\ntimeout_ms = 1500", "service[0] (www).health.timeout_ms (line 17)", "timeout_ms (1500) is greater than interval_ms (1000); expected a timeout no longer than the interval"),
            ("rise = 0", "service[0] (www).health.rise", "out of range"),
            ("fall = 0", "service[0] (www).health.fall", "out of range"),
            ("rise = \"2\"", "service[0] (www).health.rise (line 16, column 8)", "the string \"2\" is not an integer; expected the number of passed checks that bring a backend up, 1 to 1000 (write numbers without quotes: rise = 2)"),
            ("expect_status = 99", "service[0] (www).health.expect_status", "100 to 599"),
            ("expect_status = 600", "service[0] (www).health.expect_status", "100 to 599"),
            ("path = \"healthz\"", "service[0] (www).health.path (line 16)", "\"healthz\" does not start with '/'"),
            ("path = \"/a b\"", "service[0] (www).health.path", "contains spaces or control characters"),
            ("path = 5", "service[0] (www).health.path (line 16, column 8)", "the integer 5 is not a string; expected an HTTP path"),
            ("check = \"icmp\"", "service[0] (www).health.check (line 16)", "unknown value \"icmp\"; expected one of: tcp, http, tls, https, none"),
            ("host = \"\"", "service[0] (www).health.host", "not a valid Host"),
            ("check = \"tls\"\nhost = \"bad_name!\"", "service[0] (www).health.host", "\"bad_name!\" is not a DNS name or an IP address a certificate can be checked for; for check = \"tls\" host is the name"),
            ("check = \"https\"\nca_file = \"ca.pem\"", "service[0] (www).health.ca_file (line 17)", "\"ca.pem\" is not an absolute path"),
            ("check = \"tls\"\nca_file = \"/nonexistent/ca.pem\"", "service[0] (www).health.ca_file", "cannot read /nonexistent/ca.pem"),
            ("check = \"http\"\nca_file = \"/etc/ssl/ca.pem\"", "service[0] (www).health.ca_file (line 17)", "ca_file is for check = \"tls\" or \"https\", not \"http\""),
            ("check = \"tls\"\nca_file = \"/etc/hostname\"", "service[0] (www).health.ca_file", "/etc/hostname holds no certificate"),
            ("intervall_ms = 10", "service[0] (www).health.intervall_ms (line 16, column 1)", "unknown key `intervall_ms` (did you mean `interval_ms`?)"),
        ];
        for (lines, field, message) in cases {
            assert_one(&with(lines), field, message);
        }
    }

    #[test]
    fn health_of_the_wrong_type() {
        let text = BASE.replacen("name = \"www\"", "name = \"www\"\nhealth = \"http\"", 1);
        assert_one(
            &text,
            "service[0] (www).health (line 7, column 10)",
            "the string \"http\" is not a table; expected a [service.health] table",
        );
    }
}
