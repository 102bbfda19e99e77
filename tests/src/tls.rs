//! A throwaway certificate authority made at run time with `openssl`, and the
//! server certificates it signs: good ones, expired ones and ones for another
//! name, for nginx's HTTPS and xlb's `tls`/`https` checks. Everything lives in
//! a per-run directory that is removed on drop; nothing is installed anywhere.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{run_suffix, Netns};

/// The name the demo and the tests serve over HTTPS.
pub const TLS_NAME: &str = "www.foobar.com";

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a server certificate is like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Valid for its name, for a day.
    Good,
    /// Expired yesterday.
    Expired,
}

/// A CA (key and self-signed certificate) in its own temp directory.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
    issued: u32,
}

impl TestCa {
    /// Makes a new CA ("xlb test CA {tag}": CAs with different tags have different
    /// names, P-256, valid one day).
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("xlb-ca-{}-{tag}", run_suffix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = TestCa { dir, issued: 0 };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &ca.path("ca.key"),
            "-out",
            &ca.path("ca.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN=xlb test CA {tag}"),
        ])?;
        Ok(ca)
    }

    /// The CA's certificate (what a client pins).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A server certificate for `name` (CN and subjectAltName), signed by this CA.
    pub fn issue(&mut self, name: &str, kind: CertKind) -> Result<CertPair> {
        self.issued += 1;
        let n = self.issued;
        let (key, csr, cert, ext) = (
            self.path(&format!("{n}.key")),
            self.path(&format!("{n}.csr")),
            self.path(&format!("{n}.pem")),
            self.path(&format!("{n}.ext")),
        );
        std::fs::write(&ext, format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"))?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ])?;
        // `-days -1`: not after is a day before not before, i.e. expired since yesterday.
        let days = match kind {
            CertKind::Good => "1",
            CertKind::Expired => "-1",
        };
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.path("ca.pem"),
            "-CAkey",
            &self.path("ca.key"),
            "-set_serial",
            &n.to_string(),
            "-out",
            &cert,
            "-days",
            days,
            "-extfile",
            &ext,
        ])?;
        Ok(CertPair { cert: cert.into(), key: key.into() })
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out =
        Command::new("openssl").args(args).output().context("running openssl (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `GET https://{name}/` from `ns` on a new connection, with `name` resolved
/// to `vip` (port 443) and only `ca` trusted (`curl --cacert CA --resolve
/// NAME:443:VIP`): the body without surrounding whitespace, or curl's error.
pub fn https_fetch(ns: &Netns, name: &str, vip: IpAddr, ca: &Path) -> Result<String> {
    let host = match vip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let resolve = format!("{name}:443:{host}");
    let cacert = ca.to_string_lossy();
    let url = format!("https://{name}/");
    let argv = ["curl", "-sS", "--fail", "--max-time", "3", "--cacert", &cacert, "--resolve", &resolve, &url];
    let out = ns.exec_timeout(&argv, Duration::from_secs(5))?;
    if !out.status.success() {
        bail!("curl {}: {}", argv[1..].join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
