//! Stamps the build with its commit, for `shardgate --version`: the
//! `SHARDGATE_COMMIT` environment variable when set (builds from a tarball or in
//! a container without `.git`), else `git rev-parse`, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SHARDGATE_COMMIT");
    let commit = std::env::var("SHARDGATE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SHARDGATE_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    // Rebuild when HEAD moves: HEAD itself, the branches (a directory: cargo
    // looks at every file under it, new ones too), packed refs. Only paths that
    // exist: cargo takes a missing one as changed, and would run this script and
    // rebuild the whole crate on every build (a clone that has never packed its
    // refs has no `packed-refs`).
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}
