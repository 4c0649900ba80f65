//! The git commit the binary is built from, as the compile-time variable CRANE_GIT_COMMIT
//! (`--version` and the `crane_operator_build_info` metric): CRANE_GIT_COMMIT from the
//! environment when set (an image build without the repository), else `git rev-parse
//! HEAD`, else "unknown" (a source archive, no git).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CRANE_GIT_COMMIT");
    let commit = std::env::var("CRANE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(head_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CRANE_GIT_COMMIT={}", commit.trim());
}

/// The commit of HEAD, and the files whose change moves it watched for a rebuild.
fn head_commit() -> Option<String> {
    let commit = git(&["rev-parse", "HEAD"])?;
    // HEAD itself moves on a checkout, the branch it names on a commit; a worktree keeps
    // its HEAD apart from the shared refs, which --git-path resolves.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    // A file that does not exist would rerun this script on every build.
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
