//! The integration tests, as one test binary: one link of the library and its dependencies
//! instead of one per file, which is most of an incremental `cargo test` build.
//! Everything runs over real sockets on 127.0.0.1 with ports bound to 0.

mod support;

mod accesslog;
mod config;
mod demo;
mod gateway;
mod grpc;
mod hostile;
mod hygiene;
mod idlemem;
mod kubernetes;
mod lifecycle;
mod measure;
mod measure_failures;
mod oam;
mod policies;
mod properties;
mod proxy;
mod quiet;
mod readme;
mod reload;
mod resilience;
mod tls;
mod upstream_h1;
mod versions;
