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
    HealthConfig { check, path: http_path, host, expect_status, interval_ms, timeout_ms, rise, fall }
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
            ("check = \"icmp\"", "service[0] (www).health.check (line 16)", "unknown value \"icmp\"; expected one of: tcp, http, none"),
            ("host = \"\"", "service[0] (www).health.host", "not a valid Host"),
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
