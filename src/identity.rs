//! A caller's identity, read once per connection from its verified certificate: SPIFFE ID
//! (URI SAN), DNS SANs, subject CN, and the certificate's SHA-256, rendered as Envoy's
//! `x-forwarded-client-cert` value.

use std::fmt::Write as _;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The first `spiffe://` URI SAN.
    pub spiffe: Option<String>,
    pub dns: Vec<String>,
    pub cn: Option<String>,
    /// Hex SHA-256 of the certificate DER.
    pub hash: String,
}

impl Identity {
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut id = Identity {
            hash: hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri)
                        if id.spiffe.is_none() && uri.starts_with("spiffe://") =>
                    {
                        id.spiffe = Some(uri.to_string())
                    }
                    GeneralName::DNSName(dns) => id.dns.push(dns.to_string()),
                    _ => {}
                }
            }
        }
        id.cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Some(id)
    }

    /// The name used in messages and access policy: SPIFFE ID, else first DNS SAN, else CN.
    pub fn name(&self) -> &str {
        self.spiffe
            .as_deref()
            .or(self.dns.first().map(String::as_str))
            .or(self.cn.as_deref())
            .unwrap_or("(anonymous)")
    }

    /// Envoy's XFCC element: `By=<server>;Hash=<sha256>;Subject="CN=..";URI=..;DNS=..`.
    pub fn xfcc(&self, by: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(by) = by {
            let _ = write!(out, "By={by};");
        }
        let _ = write!(out, "Hash={}", self.hash);
        if let Some(cn) = &self.cn {
            let _ = write!(
                out,
                ";Subject=\"CN={}\"",
                cn.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        if let Some(uri) = &self.spiffe {
            let _ = write!(out, ";URI={uri}");
        }
        for dns in &self.dns {
            let _ = write!(out, ";DNS={dns}");
        }
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
