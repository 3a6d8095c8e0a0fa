//! Host normalisation and matching: `strip_port`, `RoutingTable::lookup` on a fixed table,
//! `request_host` through `route`, and `host_forms`. Input: `host`, or `namespace\nhost`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitproxy::config::host_forms;
use splitproxy::routing::{strip_port, Route};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (namespace, host) = text.split_once('\n').unwrap_or(("default", &text));
    let (table, forms) = splitproxy_fuzz::host_table();
    let route = |h: &str| table.lookup(h).map(|r| r as *const Route);

    // strip_port only ever removes a `:digits` suffix, or what follows `]`
    let stripped = strip_port(host);
    assert!(host.starts_with(stripped));
    let rest = &host[stripped.len()..];
    if !rest.is_empty() {
        let bracketed = stripped.starts_with('[') && stripped.ends_with(']');
        let port = rest
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        assert!(bracketed || port, "{host:?} -> {stripped:?}");
    }

    // lookup is exactly: port stripped, one trailing dot ignored, ASCII case folded
    let name = stripped.strip_suffix('.').unwrap_or(stripped);
    let folded = name.to_ascii_lowercase();
    let found = route(host);
    assert_eq!(found.is_some(), forms.contains(&folded), "{host:?}");
    if found.is_some() {
        assert_eq!(found, route(&folded));
        assert_eq!(found, route(&host.to_ascii_uppercase()));
        assert_eq!(found, route(&format!("{name}:8443")));
    }

    // what a request addresses routes the same way (Host header, or absolute-form URI)
    if let Ok(req) = http::Request::get("/").header("host", host).body(()) {
        let routed = table.route(&req, None, "fuzz");
        assert_eq!(routed.is_ok(), found.is_some(), "Host: {host:?}");
    }

    // host_forms: lower-case, one form or the five Kubernetes forms, and each qualified
    // Kubernetes form gives back the same five (for names without empty labels)
    let generated = host_forms(host, namespace);
    assert!(
        generated.len() == 1 || generated.len() == 5,
        "{generated:?}"
    );
    for f in &generated {
        assert_eq!(*f, f.to_ascii_lowercase());
    }
    let labelled = |s: &str| !s.trim_end_matches('.').split('.').any(str::is_empty);
    if generated.len() == 5 && labelled(host) && labelled(namespace) && !namespace.contains('.') {
        for f in &generated[1..] {
            assert_eq!(host_forms(f, "other"), generated, "{f:?}");
        }
    }
});
