//! `cricket check` run as a binary against a configuration of its own: state
//! dirs and socket in a temp dir, an empty CNI config dir. Needs root (the
//! overlay and xattr probes), as the rest of the integration tests do.

use std::path::Path;
use std::process::{Command, Output};

fn check(dir: &Path, extra: &str) -> Output {
    let conf_dir = dir.join("net.d");
    let drop_ins = dir.join("cricket.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&drop_ins).unwrap();
    let config = dir.join("cricket.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{d}/run/cricket.sock\"\nroot = \"{d}/root\"\nrun = \"{d}/run\"\n[cni]\nconf_dir = \"{c}\"\n{extra}",
            d = dir.display(),
            c = conf_dir.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_cricket"))
        .arg("--config")
        .arg(&config)
        .arg("--config-dir")
        .arg(&drop_ins)
        .arg("check")
        .env_remove("CRICKET_CGROUP__DRIVER")
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn host_passes_with_a_cni_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), "");
    let lines = lines(&out);
    assert_eq!(out.status.code(), Some(0), "{lines:#?}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(lines.iter().any(|l| l.starts_with("ok    overlayfs: mounted and unmounted")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("warn  cni: ") && l.contains("NetworkReady")), "{lines:#?}");
    assert!(lines.last().unwrap().ends_with(" 0 failures"), "{lines:#?}");
    // The probes clean up after themselves and create nothing cricket would.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "{left:?}");
}

#[test]
fn missing_oci_runtime_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), "[runtimes.bad]\ntype = \"oci\"\npath = \"/nonexistent/runc\"\n");
    let lines = lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    let fail = lines.iter().find(|l| l.starts_with("FAIL  ")).expect("a FAIL line");
    assert!(fail.contains("handler \"bad\"") && fail.contains("/nonexistent/runc"), "{fail}");
    assert!(lines.last().unwrap().ends_with(" 1 failure"), "{lines:#?}");
}
