//! The HTTP/1.1 request-stream scanner (`h1guard::Scanner`): arbitrary bytes never panic,
//! positions stay inside the input, and the verdict does not depend on how the bytes are
//! split into reads (an error's position may only move later across a cut). Input: one byte that picks the cut, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitproxy::config::Limits;
use splitproxy::h1guard::{Scanner, Verdict};

fn scanner() -> Scanner {
    // small limits so the fuzzer reaches 431 too
    let limits = Limits {
        request_header_bytes: 2048,
        request_headers: 16,
        ..Limits::default()
    };
    Scanner::new(&limits)
}

fn within(v: Verdict, len: usize) -> bool {
    match v {
        Verdict::Pass => true,
        Verdict::Switch { at, .. } | Verdict::Reject { at, .. } | Verdict::BadBody { at, .. } => {
            at <= len
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let whole = scanner().feed(input);
    assert!(within(whole, input.len()), "{whole:?}");
    let cut = if input.is_empty() {
        0
    } else {
        pick as usize % (input.len() + 1)
    };
    let mut s = scanner();
    let first = s.feed(&input[..cut]);
    assert!(within(first, cut), "{first:?}");
    let split = if first == Verdict::Pass {
        let second = s.feed(&input[cut..]);
        assert!(within(second, input.len() - cut), "{second:?}");
        match second {
            Verdict::Pass => Verdict::Pass,
            Verdict::Switch { at, connect } => Verdict::Switch {
                at: at + cut,
                connect,
            },
            // a head that began before the cut is reported at 0 of the second read
            Verdict::Reject { error, .. } => Verdict::Reject { at: 0, error },
            Verdict::BadBody { at, error } => Verdict::BadBody {
                at: at + cut,
                error,
            },
        }
    } else {
        first
    };
    // a bad line is reported where it starts in the read that completes it (0 when it
    // began in an earlier one), so across a cut the position may only move later
    let same = match (whole, split) {
        (Verdict::Reject { error: a, .. }, Verdict::Reject { error: b, .. }) => a == b,
        (Verdict::BadBody { at: a, error: x }, Verdict::BadBody { at: b, error: y }) => {
            x == y && b >= a
        }
        (a, b) => a == b,
    };
    assert!(same, "whole {whole:?}, split at {cut}: {split:?}");
});
