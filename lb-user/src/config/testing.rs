//! Helpers for the validators' unit tests.

use super::{parse, Problem};

/// A small valid config the broken ones are made from (line numbers matter:
/// `[daemon]` is on line 2, `vip` on 7, the second backend's address on 13).
pub const BASE: &str = r#"
[daemon]
interfaces = ["eth0", "eth1"]

[[service]]
name = "www"
vip = "198.18.0.10:80"

[[service.backend]]
address = "198.18.1.11:80"

[[service.backend]]
address = "198.18.1.12:80"
"#;

/// `BASE` with `from` (which must occur) replaced by `to`.
#[track_caller]
pub fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

/// The problems of a config expected to be refused.
#[track_caller]
pub fn problems(text: &str) -> Vec<Problem> {
    match parse(text, "test.toml") {
        Ok(config) => panic!("expected the config to be refused, but it parsed: {config:#?}"),
        Err(e) => {
            assert_eq!(e.file, "test.toml");
            assert!(!e.problems.is_empty(), "a ConfigError must carry problems");
            e.problems
        }
    }
}

/// Asserts exactly one problem, located at something containing `location`
/// (`service[0] (www).vip (line 7)`), with a message containing `message`.
#[track_caller]
pub fn assert_one(text: &str, location: &str, message: &str) {
    let problems = problems(text);
    assert!(
        problems.len() == 1 && problems[0].location().contains(location) && problems[0].message.contains(message),
        "expected one problem at `{location}` saying `{message}`, got: {problems:#?}"
    );
}
