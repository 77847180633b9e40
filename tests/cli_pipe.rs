//! A reader that stops early (`tunlb iptables | head -1`) ends tunlb's
//! output quietly, with status 0: no panic, no backtrace.

use std::process::{Command, Stdio};

#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader); // every write now fails with EPIPE
    let out = Command::new(env!("CARGO_BIN_EXE_tunlb"))
        .args([
            "iptables",
            "--vip",
            "198.18.0.1:80",
            "--backend",
            "198.18.2.3:80",
            "--backend",
            "198.18.2.4:80",
        ])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("tunlb runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
