//! Path normalisation (`path::normalize`): arbitrary paths never panic; a normalised path
//! starts with `/` when the input did, is a fixed point, and holds no dot-segment and no
//! encoded `/` or `\`; `normalize_uri` agrees with it and keeps the query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitproxy::path::{normalize, normalize_uri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = text.split('?').next().unwrap_or("");
    let Ok(out) = normalize(path) else {
        return;
    };
    if path.starts_with('/') {
        assert!(out.starts_with('/'), "{path:?} -> {out:?}");
        for segment in out.split('/') {
            assert!(segment != "." && segment != "..", "{path:?} -> {out:?}");
        }
        let upper = out.to_ascii_uppercase();
        assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{out:?}");
    }
    let again = normalize(&out).expect("a normalised path normalises");
    assert_eq!(again, out, "not a fixed point: {path:?}");

    // through a URI, as the request path uses it
    if let Ok(mut uri) = text.parse::<http::Uri>() {
        let query = uri.query().map(str::to_string);
        let expected = normalize(uri.path()).map(|p| p.into_owned());
        match (normalize_uri(&mut uri), expected) {
            (Ok(()), Ok(p)) => {
                assert_eq!(uri.path(), p);
                assert_eq!(uri.query().map(str::to_string), query);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            (got, want) => panic!("normalize_uri {got:?} but normalize {want:?} for {text:?}"),
        }
    }
});
