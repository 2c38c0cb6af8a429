//! `cargo xtask ci`: the checks CI runs on every submission.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Totals gathered from libtest's `test result:` lines.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestTotals {
    /// Adds the counts of one libtest summary line
    /// (`test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`).
    pub fn add_summary_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        let mut found = false;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => continue,
            }
            found = true;
        }
        found
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo that invoked us, so `cargo +toolchain xtask` stays on that toolchain.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs one step, echoing it first; a non-zero exit is an error naming the step.
pub fn run_step(title: &str, cmd: &mut Command) -> Result<(), String> {
    println!("==> {title}");
    println!("    $ {}", describe(cmd));
    let start = Instant::now();
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("{title}: cannot start: {e}"))?;
    println!("    ({:.1} s)", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{title} failed ({status})"))
    }
}

/// Runs a `cargo test` step, streaming its output and adding its libtest summaries to `totals`.
pub fn run_test_step(
    title: &str,
    cmd: &mut Command,
    totals: &mut TestTotals,
) -> Result<(), String> {
    println!("==> {title}");
    println!("    $ {}", describe(cmd));
    let start = Instant::now();
    let mut child = cmd
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{title}: cannot start: {e}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            totals.add_summary_line(&line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("{title}: wait failed: {e}"))?;
    println!("    ({:.1} s)", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{title} failed ({status})"))
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(cargo());
    c.args(args);
    c
}

/// Builds the release `cpr-vm` and returns its path.
pub fn build_vm() -> Result<PathBuf, String> {
    run_step(
        "build cpr-vm (release)",
        &mut cargo_cmd(&[
            "build",
            "--release",
            "--locked",
            "-p",
            "cpr-vm",
            "--bin",
            "cpr-vm",
        ]),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        workspace_root().join(target)
    };
    Ok(target.join("release").join("cpr-vm"))
}

/// The workspace's `publish = false` packages (`cargo metadata` lists them with an empty
/// `publish` list).
fn unpublished_packages() -> Result<Vec<String>, String> {
    let out = cargo_cmd(&["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo metadata: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed ({})", out.status));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata: bad JSON: {e}"))?;
    Ok(unpublished_in(&meta))
}

/// Cargo treats the workspace crates it packages as registry crates: it extracts them under
/// `$CARGO_HOME/registry/src/-<hash>/<name>-<version>` and compiles them once per name and
/// version, reusing both on the next run even when our sources changed (registry crates
/// are assumed immutable). A second `cargo xtask ci` in one checkout would then verify
/// against stale copies of our own crates. So the verification builds in a target
/// directory of its own, whose build records of our crates (all named `cpr*`) are removed
/// first, as are cargo's extractions of them. Returns that target directory.
fn forget_packaged_workspace_crates() -> PathBuf {
    let verify_dir = workspace_root().join("target").join("package-verify");
    for profile in ["debug", "release"] {
        let records = verify_dir.join(profile).join(".fingerprint");
        for entry in std::fs::read_dir(&records).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("cpr") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return verify_dir;
    };
    let ours: Vec<String> = std::fs::read_dir(workspace_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("Cargo.toml")).ok())
        .filter_map(|toml| {
            toml.lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|rest| rest.strip_suffix('"'))
                .map(|name| format!("{name}-"))
        })
        .collect();
    let overlays = std::fs::read_dir(&src).into_iter().flatten().flatten();
    for overlay in overlays.filter(|d| d.file_name().to_string_lossy().starts_with('-')) {
        for krate in std::fs::read_dir(overlay.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = krate.file_name().to_string_lossy().into_owned();
            if ours.iter().any(|prefix| name.starts_with(prefix.as_str())) {
                let _ = std::fs::remove_dir_all(krate.path());
            }
        }
    }
    verify_dir
}

/// The names of the packages in `meta` (`cargo metadata` output) that may not be published.
fn unpublished_in(meta: &serde_json::Value) -> Vec<String> {
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["publish"].as_array().is_some_and(Vec::is_empty))
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// `cargo xtask ci`.
pub fn run(lint: bool) -> Result<(), String> {
    let start = Instant::now();
    if lint {
        run_step("format", &mut cargo_cmd(&["fmt", "--all", "--", "--check"]))?;
        run_step(
            "clippy (default features)",
            &mut cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        run_step(
            "clippy (all features)",
            &mut cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    let mut totals = TestTotals::default();
    run_test_step(
        "tests (default features: no vfio)",
        &mut cargo_cmd(&["test", "--workspace", "--locked"]),
        &mut totals,
    )?;
    run_test_step(
        "tests (feature vfio)",
        &mut cargo_cmd(&[
            "test",
            "--locked",
            "-p",
            "cpr-vfio-info",
            "-p",
            "cpr-tests",
            "--features",
            "cpr-vfio-info/vfio,cpr-tests/vfio",
        ]),
        &mut totals,
    )?;
    // `cpr`'s own forward, alone: in the step above `cpr-tests` turns on
    // `cpr-vfio-info/vfio` itself, and Cargo's feature unification would hide a `cpr`
    // whose `vfio` feature forgot to forward (what `cpr-vm --features vfio` relies on).
    run_test_step(
        "tests (cpr's feature vfio, alone)",
        &mut cargo_cmd(&[
            "test",
            "--locked",
            "-p",
            "cpr",
            "--features",
            "vfio",
            "--lib",
            "vfio",
        ]),
        &mut totals,
    )?;
    let mut doc = cargo_cmd(&["doc", "--workspace", "--no-deps", "--locked"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    run_step("rustdoc", &mut doc)?;
    // Every publishable crate, built from its packaged form (what crates.io would get):
    // catches a file that build.rs or `include_bytes!` needs but the package leaves out,
    // and a path dependency without a version. Unpublished workspace dependencies come
    // from cargo's local overlay of the crates packaged in the same run. Needs crates.io
    // reachable. `--allow-dirty`: `cargo xtask ci` is run before committing too. The
    // `publish = false` packages (the tools) are left out: cargo would package them too.
    let verify_dir = forget_packaged_workspace_crates();
    let mut package = cargo_cmd(&["package", "--workspace", "--locked", "--allow-dirty"]);
    package.env("CARGO_TARGET_DIR", &verify_dir);
    for name in unpublished_packages()? {
        package.args(["--exclude", &name]);
    }
    run_step("package (every publishable crate, verified)", &mut package)?;
    let binary = build_vm()?;
    println!("==> end-to-end scenarios");
    let (passed, failed, skipped) = crate::e2e::run(&binary, 20, None);
    totals.passed += passed;
    totals.failed += failed;
    totals.ignored += skipped;
    println!(
        "xtask ci finished in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // The plain closing line CI reads.
    println!(
        "ci: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 {
        return Err(format!("{} tests failed", totals.failed));
    }
    if totals.passed == 0 {
        return Err("no test ran".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpublished_packages_are_those_with_publish_false() {
        let meta = serde_json::json!({"packages": [
            {"name": "cpr", "publish": null},
            {"name": "xtask", "publish": []},
            {"name": "cpr-vm", "publish": []},
            {"name": "only-here", "publish": ["my-registry"]},
        ]});
        assert_eq!(unpublished_in(&meta), ["xtask", "cpr-vm"]);
    }

    #[test]
    fn parses_libtest_summaries() {
        let mut t = TestTotals::default();
        assert!(t.add_summary_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        ));
        assert!(t.add_summary_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
        ));
        assert!(!t.add_summary_line("running 3 tests"));
        assert_eq!(
            t,
            TestTotals {
                passed: 15,
                failed: 2,
                ignored: 1
            }
        );
    }
}
