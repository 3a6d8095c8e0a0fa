//! The tool commands, not the proxy: `measure` (drive load at a running proxy and judge
//! its split), `demo` (the zero-config showcase), `pki` (development certificates, for
//! `certs init` and the demo), and `stats` (the chi-square test behind both verdicts).

pub mod demo;
pub mod measure;
pub mod pki;
pub mod stats;
