//! The checked-in man pages and completion scripts (`contrib/man`,
//! `contrib/completions`, written by `scripts/gen-docs.sh`) are what the
//! binary generates from the CLI today: each is regenerated into a scratch
//! directory with `tunlb man --out` and `tunlb completions SHELL` and
//! compared byte for byte. What the pages and scripts contain (every flag,
//! every subcommand) is tested next to the clap definitions, in `src/cli.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tunlb");

/// Return `contrib/SUB` of the source tree.
fn contrib(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(sub)
}

/// Return an empty scratch directory of this test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli_docs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run tunlb with `args` and return its output.
fn tunlb(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Run tunlb with `args`, which must succeed silently on stderr; return stdout.
fn stdout_of(args: &[&str]) -> Vec<u8> {
    let out = tunlb(args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "tunlb {args:?}: {:?}, {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Return the `*.1` files of `dir` with their contents, sorted by name.
fn man_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Say how the checked-in pages differ from fresh ones, or None if they do not.
fn difference(fresh: &[(String, Vec<u8>)], checked_in: &[(String, Vec<u8>)]) -> Option<String> {
    let mut diffs = Vec::new();
    for (name, text) in fresh {
        match checked_in.iter().find(|(n, _)| n == name) {
            None => diffs.push(format!("{name} missing")),
            Some((_, old)) if old != text => diffs.push(format!("{name} differs")),
            Some(_) => {}
        }
    }
    for (name, _) in checked_in {
        if !fresh.iter().any(|(n, _)| n == name) {
            diffs.push(format!("{name} is stale"));
        }
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

#[test]
fn contrib_man_matches_the_cli() {
    let dir = scratch("man");
    let out = tunlb(&["man", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "tunlb man --out: {:?}, {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = man_files(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    // tunlb.1 and one page per subcommand: run, iptables, flows, stats,
    // completions, man.
    assert!(fresh.len() >= 7, "{} pages", fresh.len());
    let pages = man_files(&contrib("man"));
    if let Some(d) = difference(&fresh, &pages) {
        panic!("contrib/man is out of date with the CLI: run scripts/gen-docs.sh ({d})");
    }
    // Without --out: the top-level page, the same bytes.
    let top = stdout_of(&["man"]);
    assert!(top.windows(4).any(|w| w == b".TH "), "not roff");
    if pages.iter().find(|(n, _)| n == "tunlb.1").map(|(_, t)| t) != Some(&top) {
        panic!("contrib/man is out of date with the CLI: run scripts/gen-docs.sh (tunlb man differs from tunlb.1)");
    }
}

#[test]
fn contrib_completions_match_the_cli() {
    for (shell, file) in [
        ("bash", "tunlb.bash"),
        ("zsh", "_tunlb"),
        ("fish", "tunlb.fish"),
    ] {
        let fresh = stdout_of(&["completions", shell]);
        assert!(fresh.len() > 1000, "{shell}: {} bytes", fresh.len());
        let path = contrib("completions").join(file);
        if std::fs::read(&path).ok().as_ref() != Some(&fresh) {
            panic!(
                "contrib/completions is out of date with the CLI: run scripts/gen-docs.sh ({file} differs)"
            );
        }
    }
}

#[test]
fn bad_shell_or_out_dir_is_one_line() {
    let out = tunlb(&["completions", "nosuchshell"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("'nosuchshell'"), "{err}");

    // --out under a regular file cannot be created: exit 1, one line.
    let dir = scratch("bad-out");
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let out = tunlb(&["man", "--out", file.join("sub").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot create "), "{err}");
}

/// `tunlb man | head`: a reader that goes away early is not an error (exit
/// 0, nothing on stderr), whether it left before or after the write.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let mut child = Command::new(BIN)
        .arg("man")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{:?}, {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
