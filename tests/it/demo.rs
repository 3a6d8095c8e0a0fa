//! `splitproxy demo` runs to completion with nothing set up: certificates, backends, the
//! proxy over mTLS, a live weight change, and the accuracy table.

use std::process::Command;

#[test]
fn demo_runs_to_completion_and_prints_the_accuracy_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_splitproxy"))
        .arg("demo")
        .env("SPLITPROXY_LOG", "warn")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    assert!(stdout.contains("configured vs observed"), "{stdout}");
    // both phases, both backends, with their configured shares
    assert!(
        stdout.contains("before the edit") && stdout.contains("after the edit"),
        "{stdout}"
    );
    assert!(
        stdout.contains("90.0%") && stdout.contains("10.0%") && stdout.contains("50.0%"),
        "{stdout}"
    );
    assert!(stdout.contains("new weights live"), "{stdout}");
    assert!(stdout.contains("p-value"), "{stdout}");
}
