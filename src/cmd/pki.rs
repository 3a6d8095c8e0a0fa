//! Development PKI with rcgen (ECDSA P-256): a CA, a server certificate, and client
//! certificates carrying SPIFFE IDs. Used by `certs init`, `demo` and the tests.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub use rcgen::Error;

/// The trust domain of the SPIFFE IDs `certs init` writes by default.
pub const TRUST_DOMAIN: &str = "cluster.local";

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// What a leaf certificate says about its holder.
#[derive(Debug, Clone, Default)]
pub struct Leaf {
    pub common_name: String,
    /// DNS names and IP addresses.
    pub names: Vec<String>,
    /// URI SANs, e.g. SPIFFE IDs.
    pub uris: Vec<String>,
    pub server: bool,
    pub client: bool,
    /// Validity as (not before, not after), in days relative to now (negative = past).
    pub valid_days: Option<(i64, i64)>,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, -1, 3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&leaf.common_name);
        for name in &leaf.names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        for uri in &leaf.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let (from, to) = leaf.valid_days.unwrap_or((-1, 825));
        validity(&mut params, from, to);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A server certificate for `names` (DNS names or IPs).
    pub fn server(&self, names: &[String]) -> Result<Issued, Error> {
        let common_name = names.first().cloned().unwrap_or_else(|| "localhost".into());
        self.issue(&Leaf {
            common_name,
            names: names.to_vec(),
            server: true,
            ..Default::default()
        })
    }

    /// A client certificate whose identity is `uri` (a SPIFFE ID) and CN `name`.
    pub fn client(&self, name: &str, uri: &str) -> Result<Issued, Error> {
        self.issue(&Leaf {
            common_name: name.into(),
            uris: vec![uri.into()],
            client: true,
            ..Default::default()
        })
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
}

/// The SPIFFE ID `certs init` gives a client named `name`.
pub fn default_spiffe(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}")
}

/// Write a development PKI into `dir`: `ca.pem`, `ca-key.pem`, `server.pem`,
/// `server-key.pem`, and `NAME.pem` + `NAME-key.pem` per client. Refuses to replace an
/// existing file unless `force`. Keys are written 0600.
pub fn init(
    dir: &Path,
    force: bool,
    sans: &[String],
    clients: &[(String, String)],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<(PathBuf, String, bool)> = Vec::new();
    let ca = Ca::new("splitproxy development CA")?;
    files.push((dir.join("ca.pem"), ca.cert_pem(), false));
    files.push((dir.join("ca-key.pem"), ca.key_pem(), true));
    let server = ca.server(sans)?;
    files.push((dir.join("server.pem"), server.cert_pem, false));
    files.push((dir.join("server-key.pem"), server.key_pem, true));
    for (name, uri) in clients {
        let c = ca.client(name, uri)?;
        files.push((dir.join(format!("{name}.pem")), c.cert_pem, false));
        files.push((dir.join(format!("{name}-key.pem")), c.key_pem, true));
    }
    if !force {
        let existing: Vec<String> = files
            .iter()
            .filter(|(p, _, _)| p.exists())
            .map(|(p, _, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            anyhow::bail!(
                "refusing to overwrite {} (use --force)",
                existing.join(", ")
            );
        }
    }
    fs::create_dir_all(dir)?;
    for (path, pem, secret) in &files {
        write_file(path, pem, *secret)?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}

/// Write `text` to `path`, mode 0600 for secrets (set at creation, never readable by others).
pub fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = options.open(path)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())
}
