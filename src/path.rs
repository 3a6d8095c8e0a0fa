//! The request path as matching sees it: RFC 3986 normalisation (section 6.2.2: percent-
//! encoded unreserved characters decoded, hex digits of the other escapes upper-cased;
//! section 5.2.4: dot-segments removed, after decoding, so `%2e%2e` is `..`). Route
//! matches, access rules and the backend all see the same normalised path, so a rule for
//! `/api` cannot be passed by `/api/../admin` towards a backend that normalises itself.
//!
//! Refused (400): a path that climbs above the root, an encoded `/` or `\` (`%2F`, `%5C`:
//! a backend that decodes them would see other segments than the rules did), and a `%`
//! not followed by two hex digits (`%%32%65` would otherwise become `%2e`, which a
//! backend decodes once more). As Envoy's `normalize_path` does, a literal `\` is read as
//! `/` (Windows servers and some frameworks treat it as one); `//` is kept (Envoy's
//! default, `merge_slashes: false`). The query is never touched.
//!
//! Pure functions, public for the fuzz targets. The common path (no `%`, no `\`, no
//! dot-segment) is found by one memchr scan and left as it is, without allocation.

use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::Uri;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path climbs above the root")]
    AboveRoot,
    #[error("request path carries an encoded / or \\")]
    EncodedSlash,
    #[error("request path has a malformed percent-encoding")]
    BadEscape,
}

/// The normalised form of `path` (a path without its query). `Borrowed` when it is
/// normal already. A path that does not start with `/` (`*`, an authority-form target) is
/// returned as it is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes)?;
    let out = remove_dot_segments(&decoded)?;
    if out == bytes {
        return Ok(Cow::Borrowed(path));
    }
    // only whole segments were removed and ASCII bytes replaced: still UTF-8
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape)
}

/// Normalise the path of `uri` in place, its query, scheme and authority kept.
pub fn normalize_uri(uri: &mut Uri) -> Result<(), PathError> {
    let mut path = match normalize(uri.path())? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(p) => p,
    };
    let mut parts = std::mem::take(uri).into_parts();
    if let Some(query) = parts.path_and_query.as_ref().and_then(PathAndQuery::query) {
        path.push('?');
        path.push_str(query);
    }
    // the normalised path has only characters the original had, or unreserved ones
    parts.path_and_query = Some(PathAndQuery::try_from(path).map_err(|_| PathError::BadEscape)?);
    *uri = Uri::from_parts(parts).map_err(|_| PathError::BadEscape)?;
    Ok(())
}

/// Whether `path` has anything to normalise: a `%`, a `\`, or a `.` or `..` segment.
#[inline]
fn needs_work(path: &[u8]) -> bool {
    memchr::memchr3_iter(b'%', b'\\', b'.', path).any(|i| {
        if path[i] != b'.' {
            return true;
        }
        // a `.` starts a dot-segment only right after a `/`, and ends it at `/` or the end
        if i == 0 || path[i - 1] != b'/' {
            return false;
        }
        matches!(&path[i + 1..], [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..])
    })
}

/// Unreserved characters (RFC 3986 section 2.3): their percent-encoded form means the same.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encoded unreserved characters decoded, other escapes with upper-case hex, a
/// literal `\` as `/`.
fn decode(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' => {
                let digit = |j: usize| path.get(j).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let byte = hi << 4 | lo;
                if byte == b'/' || byte == b'\\' {
                    return Err(PathError::EncodedSlash);
                }
                if is_unreserved(byte) {
                    out.push(byte);
                } else {
                    out.extend_from_slice(&[b'%', HEX_UPPER[hi as usize], HEX_UPPER[lo as usize]]);
                }
                i += 3;
            }
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4 on an absolute path (it starts with `/`); a `..` with nothing
/// left to remove climbs above the root, which is an error rather than the RFC's silent
/// stop at the root (a client that sends it is probing).
fn remove_dot_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            b"." => {}
            b".." => match out.iter().rposition(|b| *b == b'/') {
                Some(j) => out.truncate(j),
                None => return Err(PathError::AboveRoot),
            },
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
                continue;
            }
        }
        // a dot-segment at the end leaves the folder it names: `/a/b/..` is `/a/`
        if segments.peek().is_none() {
            out.push(b'/');
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api",
            "/api/v1/items",
            "/static/app.min.js",
            "/a/.hidden/b",
            "/a/..b/c",
            "/a/b../c",
            "/a/.../c",
            "/a//b",
            "//",
            "/a/b/",
            "*",
            "",
            "/caf\u{e9}",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p:?}: {:?}",
                normalize(p)
            );
        }
        // escapes that are normal already: no new string either
        assert!(matches!(normalize("/a%20b/%C3%A9"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_are_removed() {
        let cases = [
            ("/api/../admin", "/admin"),
            ("/api/./admin", "/api/admin"),
            ("/./a", "/a"),
            ("/.", "/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/a/b/./", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/c/../../d", "/a/d"),
            ("/a//..", "/a/"),
            ("/a//../b", "/a/b"),
            ("//..", "/"),
            ("/a/b/../../", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_in_any_case() {
        let cases = [
            ("/api/%61", "/api/a"),
            ("/%41%5a%30%39", "/AZ09"),
            ("/%2d%2E%5f%7e", "/-._~"),
            ("/%7E%7e", "/~~"),
            // other escapes stay, hex upper-cased (RFC 3986 section 6.2.2.1)
            ("/a%20b", "/a%20b"),
            ("/a%3ab%3Fc", "/a%3Ab%3Fc"),
            ("/%c3%a9", "/%C3%A9"),
            ("/%25", "/%25"),
            // decoding never makes a new escape
            ("/%2541", "/%2541"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        let cases = [
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/api/%2e./admin", "/admin"),
            ("/api/%2e/admin", "/api/admin"),
            ("/api/%2E", "/api/"),
            ("/%61pi/%2e%2E/%61dmin", "/admin"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in [
            "/..",
            "/../",
            "/../x",
            "/api/../../x",
            "/a/b/../../..",
            "/%2e%2e",
            "/%2E%2E/etc/passwd",
            "/api/.%2E/%2e./x",
            "/./../x",
            "/a/..\\..",
        ] {
            assert_eq!(norm(p), Err(PathError::AboveRoot), "{p}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused() {
        for p in [
            "/api/%2fadmin",
            "/api%2F..%2Fadmin",
            "/api/%5cadmin",
            "/api/%5C..%5Cadmin",
            "/%2F",
            "/a/%2e%2e%2fb",
        ] {
            assert_eq!(norm(p), Err(PathError::EncodedSlash), "{p}");
        }
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for p in ["/%", "/a%2", "/a%zz", "/a%g1", "/%%32%65", "/a%2e%", "/%-1"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
    }

    #[test]
    fn a_literal_backslash_is_a_slash() {
        assert_eq!(norm("/api\\..\\admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/a\\b").as_deref(), Ok("/a/b"));
        assert_eq!(norm("\\").as_deref(), Ok("\\"), "not a path: untouched");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in [
            "/api/%2e%2e/admin",
            "/a/%7e/./b/",
            "/x/%c3%a9/../y",
            "/a\\b/..",
        ] {
            let once = norm(p).unwrap();
            assert!(
                matches!(normalize(&once), Ok(Cow::Borrowed(_))),
                "{p} -> {once}"
            );
        }
    }

    /// Every path of up to 5 characters over the alphabet that matters: never a panic, and
    /// an accepted path normalises to a fixed point without dot-segments or `\`.
    #[test]
    fn every_short_path_normalises_to_a_fixed_point() {
        const ALPHABET: &[u8] = b"/.%2eEfFa5c\\";
        let mut checked = 0;
        for len in 0..=5u32 {
            for mut n in 0..(ALPHABET.len() as u64).pow(len) {
                let mut p = String::from("/");
                for _ in 0..len {
                    p.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
                    n /= ALPHABET.len() as u64;
                }
                let Ok(out) = normalize(&p) else { continue };
                assert!(out.starts_with('/'), "{p} -> {out}");
                assert!(!out.contains('\\'), "{p} -> {out}");
                assert!(
                    !out.split('/').any(|s| s == "." || s == ".."),
                    "{p} -> {out}"
                );
                assert!(
                    matches!(normalize(&out), Ok(Cow::Borrowed(_))),
                    "{p} -> {out}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn the_uri_keeps_its_query_scheme_and_authority() {
        let mut uri: Uri = "https://web.example:8443/api/%2e%2e/admin?x=%2F..&y=1"
            .parse()
            .unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://web.example:8443/admin?x=%2F..&y=1"
        );
        let mut uri: Uri = "/a/./b?q".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "/a/b?q");
        let mut uri: Uri = "/fine?../x".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "/fine?../x");
        let mut uri: Uri = "/%2f".parse().unwrap();
        assert_eq!(normalize_uri(&mut uri), Err(PathError::EncodedSlash));
    }
}
