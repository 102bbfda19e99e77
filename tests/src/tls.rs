//! A throwaway certificate authority made at run time with `openssl`, and the
//! server certificates it signs: good ones, expired ones and ones for another
//! name, for nginx's HTTPS and xlb's `tls`/`https` checks. Everything lives in
//! a per-run directory that is removed on drop; nothing is installed anywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::netns::run_suffix;

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
