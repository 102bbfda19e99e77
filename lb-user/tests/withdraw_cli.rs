//! `xlb withdraw` (the unit's ExecStopPost): disables every VIP's BIRD
//! protocol of the config, over BIRD's control socket; does nothing without
//! `[daemon.announce]`; fails, naming the socket, when BIRD cannot be reached.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    path::PathBuf,
    process::{Command, Output},
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

const BASE: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "www"
vip = "198.18.0.10:80"
[[service.backend]]
address = "198.18.1.11:80"

[[service]]
name = "www-tls"
vip = "198.18.0.10:443"
[[service.backend]]
address = "198.18.1.11:443"

[[service]]
name = "www6"
vip = "[2001:db8::10]:80"
[[service.backend]]
address = "[2001:db8:1::11]:80"
"#;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlb-withdraw-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn withdraw(config: &str, dir: &std::path::Path) -> Output {
    let path = dir.join("xlb.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(XLB)
        .args(["withdraw", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {XLB}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn without_announce_nothing_is_done() {
    let dir = scratch("none");
    let out = withdraw(BASE, &dir);
    assert!(out.status.success(), "exit {:?}: {}", out.status, text(&out.stderr));
    assert!(text(&out.stdout).contains("no [daemon.announce]"), "{}", text(&out.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreachable_bird_fails_naming_the_socket() {
    let dir = scratch("unreachable");
    let sock = dir.join("bird.ctl");
    let out = withdraw(&format!("{BASE}\n[daemon.announce]\nsocket = \"{}\"\n", sock.display()), &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot reach BIRD at {}", sock.display())), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One `disable` per VIP address (not per service), with the pattern's names.
#[test]
fn every_vip_protocol_is_disabled() {
    let dir = scratch("bird");
    let sock = dir.join("bird.ctl");
    let listener = UnixListener::bind(&sock).unwrap();
    let bird = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
        let mut got = Vec::new();
        for line in BufReader::new(s).lines() {
            let line = line.unwrap();
            let name = line.split('"').nth(1).unwrap_or_default().to_owned();
            w.write_all(format!("0009-{name}: disabled\n0000 \n").as_bytes()).unwrap();
            got.push(line);
        }
        got
    });
    let config = format!("{BASE}\n[daemon.announce]\nsocket = \"{}\"\nprotocol = \"vip_{{vip}}\"\n", sock.display());
    let out = withdraw(&config, &dir);
    assert!(out.status.success(), "exit {:?}: {}", out.status, text(&out.stderr));
    assert_eq!(bird.join().unwrap(), ["disable \"vip_198_18_0_10\"", "disable \"vip_2001_db8__10\""]);
    let said = text(&out.stdout);
    assert!(said.contains("withdrawn 198.18.0.10 (BIRD protocol vip_198_18_0_10 disabled)"), "{said}");
    let _ = std::fs::remove_dir_all(dir);
}
