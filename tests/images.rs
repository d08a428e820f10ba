//! End-to-end tests of the image service: the real `cricket serve` pulling
//! from a real `docker-registry` through CRI on its unix socket.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

use common::*;
use tar::EntryType;
use tonic::Code;

fn condition<'a>(status: &'a cri::StatusResponse, kind: &str) -> &'a cri::RuntimeCondition {
    let conditions = &status.status.as_ref().expect("RuntimeStatus").conditions;
    conditions.iter().find(|c| c.r#type == kind).unwrap_or_else(|| panic!("no {kind} condition in {conditions:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_service_answers() {
    let d = Daemon::start(&[], "").await;
    let mut rt = d.runtime().await;

    let v = rt.version(cri::VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("cricket", "v1"));
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let status = rt.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let overlay = std::fs::read_to_string("/proc/filesystems").unwrap().lines().any(|l| l.ends_with("\toverlay"));
    let ready = condition(&status, "RuntimeReady");
    assert_eq!(ready.status, overlay, "{ready:?}");
    let net = condition(&status, "NetworkReady");
    assert!(!net.status, "no CNI config, yet {net:?}");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(net.message.contains(&d.cni_dir.display().to_string()), "{net:?}");
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(config["root"], d.root.display().to_string());
    assert!(status.runtime_handlers.iter().any(|h| h.name.is_empty()), "{:?}", status.runtime_handlers);

    let rc = rt.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);

    // An RPC not built yet (RunPodSandbox is being built, so not that one).
    let err = rt.checkpoint_container(cri::CheckpointContainerRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("CheckpointContainer"), "{err:?}");
}

/// A stop as soon as the socket answers (systemd may send one then) is a
/// clean shutdown: exit 0, socket removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_start_is_clean() {
    let mut d = Daemon::start(&[], "").await;
    let status = d.stop(Duration::from_secs(15)).expect("the daemon was running");
    assert!(status.success(), "{status}; log:\n{}", d.log());
    assert!(d.log().contains("SIGTERM: shutting down"), "{}", d.log());
    assert!(!d.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_inspect() {
    let reg = Registry::start().await;
    let host = reg.host();
    let base = Image::new(vec![busybox_layer()]);
    let busybox = reg.push_image("tests/busybox", "1.0", &base).await;
    let short = reg.push_image("busybox-test", "latest", &base).await;
    let app = reg.push_image("tests/app", "v1", &base.clone().user("app")).await;
    let numeric = reg.push_image("tests/numeric", "v1", &base.clone().user("1234:1234")).await;
    let d = Daemon::start(&[&host], &format!("[registries]\ndefault = \"{host}\"\n")).await;

    // By tag.
    let name = format!("{host}/tests/busybox:1.0");
    assert_eq!(d.pull(&name).await.unwrap(), busybox.config_digest);
    let img = d.image_status(&name).await.expect("pulled image has a status");
    assert_eq!(img.id, busybox.config_digest);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(img.repo_digests, vec![format!("{host}/tests/busybox@{}", busybox.manifest_digest)]);
    assert_eq!(img.size, busybox.size);
    assert!(img.size > 1_000_000, "busybox alone is bigger: {}", img.size);
    assert_eq!((img.uid, img.username.as_str()), (None, ""));
    assert_eq!(d.list_images().await, vec![img.clone()]);
    // ImageStatus finds it by ID, by ID prefix and by repo digest too.
    for alias in [img.id.clone(), img.id[7..19].to_string(), img.repo_digests[0].clone()] {
        assert_eq!(d.image_status(&alias).await.map(|i| i.id), Some(img.id.clone()), "{alias}");
    }

    // By digest: no tag is recorded, the digest is.
    let by_digest = format!("{host}/tests/app@{}", app.manifest_digest);
    assert_eq!(d.pull(&by_digest).await.unwrap(), app.config_digest);
    let img = d.image_status(&by_digest).await.unwrap();
    assert_eq!((img.repo_tags.clone(), img.repo_digests.clone()), (vec![], vec![by_digest.clone()]));
    assert_eq!((img.uid, img.username.as_str()), (None, "app"));
    let (_, info) = d.image_info(&by_digest).await;
    assert_eq!(info["id"], app.config_digest);
    assert_eq!(info["imageSpec"]["config"]["User"], "app");
    assert_eq!(info["imageSpec"]["architecture"], host_arch());
    assert_eq!(info["layers"][0], busybox_layer().diff_id);

    let name = format!("{host}/tests/numeric:v1");
    assert_eq!(d.pull(&name).await.unwrap(), numeric.config_digest);
    let img = d.image_status(&name).await.unwrap();
    assert_eq!((img.uid.map(|u| u.value), img.username.as_str()), (Some(1234), ""));

    // A short name resolves through registries.default; same config, so the same image gains the names.
    assert_eq!(short.config_digest, busybox.config_digest);
    assert_eq!(d.pull("busybox-test").await.unwrap(), busybox.config_digest);
    let img = d.image_status("busybox-test").await.expect("short name finds the image");
    let tags: BTreeSet<&str> = img.repo_tags.iter().map(String::as_str).collect();
    assert_eq!(
        tags,
        BTreeSet::from([format!("{host}/tests/busybox:1.0").as_str(), format!("{host}/busybox-test:latest").as_str()])
    );
    assert!(img.repo_digests.contains(&format!("{host}/busybox-test@{}", short.manifest_digest)), "{img:?}");
    assert_eq!(d.list_images().await.len(), 3);

    // ListImages with a filter.
    let req = cri::ListImagesRequest {
        filter: Some(cri::ImageFilter { image: Some(spec(&format!("{host}/tests/numeric:v1"))) }),
    };
    let listed = d.images().await.list_images(req).await.unwrap().into_inner().images;
    assert_eq!(listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [numeric.config_digest.as_str()]);

    // The tag moves to a new image: the old one keeps its other names only.
    let moved = reg.push_image("tests/busybox", "1.0", &base.clone().user("moved")).await;
    let name = format!("{host}/tests/busybox:1.0");
    assert_eq!(d.pull(&name).await.unwrap(), moved.config_digest);
    assert_eq!(d.image_status(&name).await.unwrap().id, moved.config_digest);
    let old = d.image_status(&busybox.config_digest).await.expect("the old image is still there");
    assert_eq!(old.repo_tags, vec![format!("{host}/busybox-test:latest")]);
    assert_eq!(d.list_images().await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacked_snapshots_have_the_layer_content() {
    let reg = Registry::start().await;
    let data = Layer::new(
        Tar::new()
            .dir("data", 0o755)
            .file("data/keep.txt", 0o644, b"keep")
            .file("data/old.txt", 0o644, b"old")
            .dir("opt", 0o755)
            .dir("opt/x", 0o755)
            .file("opt/x/lower", 0o600, b"hidden by the opaque dir")
            .finish(),
        Compression::Gzip,
    );
    let upper = Layer::new(
        Tar::new()
            .dir("data", 0o755)
            .file("data/.wh.old.txt", 0o644, b"")
            .dir("opt/x", 0o755)
            .file("opt/x/.wh..wh..opq", 0o644, b"")
            .file("opt/x/new", 0o644, b"new")
            .finish(),
        Compression::Gzip,
    );
    let image = Image::new(vec![busybox_layer(), data.clone(), upper.clone()]);
    let pushed = reg.push_image("tests/layers", "v1", &image).await;
    let d = Daemon::start(&[&reg.host()], "").await;
    assert_eq!(d.pull(&format!("{}/tests/layers:v1", reg.host())).await.unwrap(), pushed.config_digest);

    assert_eq!(d.snapshot_dirs().len(), 3);
    assert!(d.tmp_entries().is_empty());

    let bb = d.snapshot(&busybox_layer().diff_id).expect("busybox layer in index.json");
    let meta = std::fs::symlink_metadata(bb.join("bin/busybox")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!(meta.len(), std::fs::metadata(busybox_path()).unwrap().len());
    for applet in ["ls", "cat", "sleep", "grep"] {
        let m = std::fs::symlink_metadata(bb.join("bin").join(applet)).unwrap();
        assert_eq!(m.ino(), meta.ino(), "bin/{applet} is a hard link to bin/busybox");
    }
    assert_eq!(meta.nlink(), 5);
    for applet in ["sh", "echo"] {
        assert_eq!(std::fs::read_link(bb.join("bin").join(applet)).unwrap(), std::path::Path::new("busybox"));
    }
    assert_eq!(std::fs::read_to_string(bb.join("etc/passwd")).unwrap(), PASSWD);
    let home = std::fs::metadata(bb.join("home/app")).unwrap();
    assert_eq!((home.uid(), home.gid(), home.mode() & 0o7777), (1234, 1234, 0o750));
    assert_eq!(std::fs::metadata(bb.join("tmp")).unwrap().mode() & 0o7777, 0o1777);

    let lower = d.snapshot(&data.diff_id).unwrap();
    assert_eq!(std::fs::read(lower.join("data/old.txt")).unwrap(), b"old");
    assert_eq!(std::fs::metadata(lower.join("opt/x/lower")).unwrap().mode() & 0o7777, 0o600);

    let top = d.snapshot(&upper.diff_id).unwrap();
    let wh = std::fs::symlink_metadata(top.join("data/old.txt")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device: {wh:?}");
    assert_eq!(wh.rdev(), 0);
    assert!(!top.join("data/.wh.old.txt").exists() && !top.join("data/keep.txt").exists());
    assert_eq!(xattr(&top.join("opt/x"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(!top.join("opt/x/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(top.join("opt/x/new")).unwrap(), b"new");
    assert_eq!(xattr(&lower.join("opt/x"), "trusted.overlay.opaque"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressions_platforms_and_docker_manifests() {
    let reg = Registry::start().await;
    let host = reg.host();
    let mut expected = Vec::new();
    for (tag, compression) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd), ("plain", Compression::None)] {
        let layer = marker_layer(tag, compression);
        let pushed = reg.push_image("tests/compressed", tag, &Image::new(vec![layer.clone()])).await;
        expected.push((format!("{host}/tests/compressed:{tag}"), pushed, layer, tag));
    }
    // Multi-arch: both manifests pushed by digest, then an index under the tag.
    let layer = marker_layer("multi", Compression::Gzip);
    let amd = reg.push_image("tests/multi", "", &Image::new(vec![layer.clone()]).arch("amd64")).await;
    let arm = reg.push_image("tests/multi", "", &Image::new(vec![layer.clone()]).arch("arm64")).await;
    assert_ne!(amd.config_digest, arm.config_digest);
    let index = reg.push_index("tests/multi", "v1", &[&amd, &arm]).await;
    let docker = reg
        .push_image("tests/docker", "v1", &Image::new(vec![marker_layer("docker", Compression::Gzip)]).docker())
        .await;

    let d = Daemon::start(&[&host], "").await;
    for (name, pushed, layer, text) in &expected {
        assert_eq!(d.pull(name).await.unwrap(), pushed.config_digest, "{name}");
        let snap = d.snapshot(&layer.diff_id).expect("layer recorded");
        assert_eq!(std::fs::read_to_string(snap.join("etc/marker")).unwrap(), *text);
    }

    let name = format!("{host}/tests/multi:v1");
    let id = d.pull(&name).await.unwrap();
    let chosen = match host_arch() {
        "amd64" => &amd,
        "arm64" => &arm,
        other => panic!("no test image for {other}"),
    };
    assert_eq!(id, chosen.config_digest);
    let (img, info) = d.image_info(&name).await;
    assert_eq!(img.repo_digests, vec![format!("{host}/tests/multi@{index}")]);
    assert_eq!(info["manifests"], serde_json::json!([index, chosen.manifest_digest]));
    assert_eq!(info["imageSpec"]["architecture"], host_arch());

    let name = format!("{host}/tests/docker:v1");
    assert_eq!(d.pull(&name).await.unwrap(), docker.config_digest);
    let img = d.image_status(&name).await.unwrap();
    assert_eq!(img.repo_digests, vec![format!("{host}/tests/docker@{}", docker.manifest_digest)]);
    assert_eq!(d.list_images().await.len(), 5);
    assert_eq!(d.snapshot_dirs().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_unpack_a_layer_once() {
    let reg = Registry::start().await;
    let a = reg.push_image("tests/a", "v1", &Image::new(vec![busybox_layer()])).await;
    let b =
        reg.push_image("tests/b", "v1", &Image::new(vec![busybox_layer(), marker_layer("b", Compression::Zstd)])).await;
    let d = Daemon::start_with_env(&[&reg.host()], "", &[("CRICKET_LOG__LEVEL", "cricket=debug,info")]).await;
    let (name_a, name_b) = (format!("{}/tests/a:v1", reg.host()), format!("{}/tests/b:v1", reg.host()));

    let (r1, r2, r3) = tokio::join!(d.pull(&name_a), d.pull(&name_a), d.pull(&name_b));
    assert_eq!(r1.unwrap(), a.config_digest);
    assert_eq!(r2.unwrap(), a.config_digest);
    assert_eq!(r3.unwrap(), b.config_digest);

    // Two layers, two snapshot dirs: the shared busybox layer was unpacked once.
    assert_eq!(d.snapshot_dirs().len(), 2, "{:?}", d.snapshot_dirs());
    assert_eq!(d.index()["layers"].as_object().unwrap().len(), 2);
    assert!(d.snapshot(&busybox_layer().diff_id).unwrap().join("bin/busybox").is_file());
    assert!(d.tmp_entries().is_empty());
    assert_eq!(d.list_images().await.len(), 2);
    let log = d.log();
    assert_eq!(log.matches("image pulled").count(), 3, "{log}");
    assert_eq!(log.matches("layer unpacked").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_images_and_shared_layers() {
    let reg = Registry::start().await;
    let host = reg.host();
    let extra = marker_layer("b", Compression::Gzip);
    let a = reg.push_image("tests/a", "v1", &Image::new(vec![busybox_layer()])).await;
    let b = reg.push_image("tests/b", "v1", &Image::new(vec![busybox_layer(), extra.clone()])).await;
    let c = reg.push_image("tests/c", "v1", &Image::new(vec![marker_layer("c", Compression::Gzip)])).await;
    let d = Daemon::start(&[&host], "").await;
    let (name_a, name_b, name_c) =
        (format!("{host}/tests/a:v1"), format!("{host}/tests/b:v1"), format!("{host}/tests/c:v1"));
    for name in [&name_a, &name_b, &name_c] {
        d.pull(name).await.unwrap();
    }
    let shared = d.snapshot(&busybox_layer().diff_id).unwrap();
    let only_b = d.snapshot(&extra.diff_id).unwrap();
    assert_eq!(d.snapshot_dirs().len(), 3);

    // By tag: the shared layer stays, B still uses it.
    d.remove(&name_a).await.unwrap();
    assert_eq!(d.image_status(&name_a).await, None);
    assert!(shared.join("bin/busybox").is_file(), "shared layer removed with the first image");
    assert!(!d.blobs().contains(&a.config_digest[7..]), "A's config blob kept");
    assert_eq!(
        d.list_images().await.iter().map(|i| i.id.clone()).collect::<BTreeSet<_>>(),
        BTreeSet::from([b.config_digest.clone(), c.config_digest.clone()])
    );

    // By ID: now the shared layer goes too.
    d.remove(&b.config_digest).await.unwrap();
    assert_eq!(d.image_status(&name_b).await, None);
    assert!(!shared.exists() && !only_b.exists());
    assert_eq!(d.snapshot_dirs().len(), 1);

    // By repo digest.
    d.remove(&format!("{host}/tests/c@{}", c.manifest_digest)).await.unwrap();
    assert_eq!(d.image_status(&name_c).await, None);
    assert!(d.list_images().await.is_empty());
    assert!(d.snapshot_dirs().is_empty(), "{:?}", d.snapshot_dirs());
    assert!(d.blobs().is_empty(), "{:?}", d.blobs());
    let index = d.index();
    assert!(
        index["images"].as_object().unwrap().is_empty() && index["layers"].as_object().unwrap().is_empty(),
        "{index}"
    );

    // Unknown images: removal succeeds, status is empty.
    d.remove(&name_a).await.unwrap();
    d.remove(&format!("{host}/tests/never:v1")).await.unwrap();
    d.remove(&format!("sha256:{}", "0".repeat(64))).await.unwrap();
    assert_eq!(d.image_status(&format!("{host}/tests/never:v1")).await, None);
    assert_eq!(d.image_status(&format!("sha256:{}", "0".repeat(64))).await, None);

    // A removed image can be pulled again.
    assert_eq!(d.pull(&name_a).await.unwrap(), a.config_digest);
    assert!(d.snapshot(&busybox_layer().diff_id).unwrap().join("bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_tracks_usage() {
    let reg = Registry::start().await;
    reg.push_image("tests/a", "v1", &Image::new(vec![busybox_layer()])).await;
    reg.push_image("tests/b", "v1", &Image::new(vec![marker_layer("b", Compression::Gzip)])).await;
    let d = Daemon::start(&[&reg.host()], "").await;

    let empty = d.fs_info().await;
    let mountpoint = empty.fs_id.as_ref().unwrap().mountpoint.clone();
    assert!(std::path::Path::new(&mountpoint).starts_with(&d.root), "{mountpoint} is not under {}", d.root.display());
    assert!(empty.timestamp > 0);
    let used = |u: &cri::FilesystemUsage| (u.used_bytes.as_ref().unwrap().value, u.inodes_used.as_ref().unwrap().value);

    d.pull(&format!("{}/tests/a:v1", reg.host())).await.unwrap();
    let one = d.fs_info().await;
    let busybox_len = std::fs::metadata(busybox_path()).unwrap().len();
    assert!(used(&one).0 >= busybox_len && used(&one).1 > 0, "{one:?}");
    assert!(used(&one).0 > used(&empty).0 && used(&one).1 > used(&empty).1);

    d.pull(&format!("{}/tests/b:v1", reg.host())).await.unwrap();
    let two = d.fs_info().await;
    assert!(used(&two).0 > used(&one).0 && used(&two).1 > used(&one).1, "{one:?} -> {two:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart() {
    let reg = Registry::start().await;
    let a = reg.push_image("tests/a", "v1", &Image::new(vec![busybox_layer()]).user("app")).await;
    reg.push_image("tests/b", "v1", &Image::new(vec![busybox_layer(), marker_layer("b", Compression::Zstd)])).await;
    let mut d = Daemon::start(&[&reg.host()], "").await;
    let name_a = format!("{}/tests/a:v1", reg.host());
    d.pull(&name_a).await.unwrap();
    d.pull(&format!("{}/tests/b:v1", reg.host())).await.unwrap();
    let before = d.list_images().await;
    let snapshots = d.snapshot_dirs();
    assert_eq!((before.len(), snapshots.len()), (2, 2));

    // Debris a crash could leave: an unpack in progress and an unreferenced snapshot.
    std::fs::create_dir_all(d.store().join("tmp/0123456789abcdef/bin")).unwrap();
    std::fs::create_dir_all(d.store().join("snapshots/999/etc")).unwrap();

    d.restart().await;
    assert_eq!(d.list_images().await, before);
    assert_eq!(d.snapshot_dirs(), snapshots, "orphan snapshot not collected or a live one lost");
    assert!(d.tmp_entries().is_empty());
    assert!(d.snapshot(&busybox_layer().diff_id).unwrap().join("bin/busybox").is_file());
    assert_eq!(d.image_status(&name_a).await.unwrap().username, "app");

    // Pulling again is a no-op on disk; removal still frees what it should.
    assert_eq!(d.pull(&name_a).await.unwrap(), a.config_digest);
    assert_eq!(d.snapshot_dirs(), snapshots);
    d.remove(&name_a).await.unwrap();
    assert_eq!(d.snapshot_dirs(), snapshots, "busybox layer is still used by B");
    assert_eq!(d.list_images().await.len(), 1);
}

/// The store after a failed pull: the same images, no new snapshots or blobs, nothing in tmp/.
async fn assert_intact(
    d: &Daemon,
    images: &[cri::Image],
    snapshots: &BTreeSet<String>,
    blobs: &BTreeSet<String>,
    what: &str,
) {
    assert_eq!(d.list_images().await, images, "{what}: images changed");
    assert_eq!(&d.snapshot_dirs(), snapshots, "{what}: snapshots changed");
    assert_eq!(&d.blobs(), blobs, "{what}: blobs changed");
    assert!(d.tmp_entries().is_empty(), "{what}: left {:?} in tmp/", d.tmp_entries());
}

fn expect_error(result: Result<String, tonic::Status>, code: Code, needles: &[&str], what: &str) {
    let err = result.expect_err(what);
    eprintln!("{what}: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), code, "{what}: {err:?}");
    for needle in needles {
        assert!(err.message().contains(needle), "{what}: message lacks {needle:?}: {}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_inputs_leave_the_store_intact() {
    let reg = Registry::start().await;
    let host = reg.host();
    let good = reg.push_image("tests/good", "v1", &Image::new(vec![busybox_layer()])).await;

    let escape = Layer::new(
        Tar::new().file("ok", 0o644, b"ok").raw(b"../escape", EntryType::Regular, b"gotcha").finish(),
        Compression::Gzip,
    );
    reg.push_image("tests/escape", "v1", &Image::new(vec![escape])).await;

    let outside = tempdir();
    let traversal = Layer::new(
        Tar::new().symlink("evil", outside.path().to_str().unwrap()).file("evil/pwned", 0o644, b"pwned").finish(),
        Compression::Gzip,
    );
    reg.push_image("tests/traversal", "v1", &Image::new(vec![traversal])).await;

    let tampered = marker_layer("tampered", Compression::Gzip);
    reg.push_image("tests/tampered", "v1", &Image::new(vec![tampered.clone()])).await;
    let stored = reg.blob_data(&tampered.digest);
    let bytes: Vec<u8> = std::fs::read(&stored).unwrap().iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&stored, bytes).unwrap();

    let mut lying = marker_layer("lying", Compression::Gzip);
    lying.diff_id = sha256(b"some other tar");
    reg.push_image("tests/diffid", "v1", &Image::new(vec![lying])).await;

    let fake = fake_registry(vec![Route::new("/manifests/v1", OCI_MANIFEST, b"<html>not json</html>")]).await;
    let closed = closed_port();
    let down = format!("127.0.0.1:{}", closed.port);

    let d = Daemon::start(&[&host, &fake, &down], "").await;
    assert_eq!(d.pull(&format!("{host}/tests/good:v1")).await.unwrap(), good.config_digest);
    let (images, snapshots, blobs) = (d.list_images().await, d.snapshot_dirs(), d.blobs());

    expect_error(d.pull(&format!("{host}/tests/escape:v1")).await, Code::DataLoss, &["../escape"], "`../escape` entry");
    assert_intact(&d, &images, &snapshots, &blobs, "escape").await;
    assert!(!d.store().join("escape").exists() && !d.store().join("tmp/escape").exists());

    expect_error(
        d.pull(&format!("{host}/tests/traversal:v1")).await,
        Code::DataLoss,
        &["evil/pwned", "symlink"],
        "symlink traversal",
    );
    assert_intact(&d, &images, &snapshots, &blobs, "traversal").await;
    assert!(names(outside.path()).is_empty(), "wrote through the symlink: {:?}", names(outside.path()));

    expect_error(
        d.pull(&format!("{host}/tests/tampered:v1")).await,
        Code::DataLoss,
        &[&tampered.digest, "digest"],
        "tampered blob",
    );
    assert_intact(&d, &images, &snapshots, &blobs, "tampered").await;

    expect_error(
        d.pull(&format!("{host}/tests/diffid:v1")).await,
        Code::DataLoss,
        &["diff_id mismatch"],
        "wrong diff ID",
    );
    assert_intact(&d, &images, &snapshots, &blobs, "diff ID").await;

    expect_error(d.pull(&format!("{fake}/tests/html:v1")).await, Code::DataLoss, &["not JSON"], "HTML manifest");
    assert_intact(&d, &images, &snapshots, &blobs, "html").await;

    expect_error(d.pull(&format!("{down}/tests/down:v1")).await, Code::Unavailable, &[&down], "registry down");
    expect_error(d.pull(&format!("{host}/tests/nope:v1")).await, Code::NotFound, &["tests/nope"], "unknown repository");
    expect_error(d.pull(&format!("{host}/tests/good:nope")).await, Code::NotFound, &["tests/good:nope"], "unknown tag");
    expect_error(d.pull("UPPER/Case").await, Code::InvalidArgument, &["UPPER/Case"], "invalid reference");
    assert_intact(&d, &images, &snapshots, &blobs, "the rest").await;
}

#[test]
fn config_errors_and_overrides() {
    let dir = tempdir();
    let empty = dir.path().join("config.d");
    std::fs::create_dir(&empty).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "socket = \"{0}/s.sock\"\nroot = \"{0}/root\"\nrun = \"{0}/run\"\n[pull]\nmax_concurent_layers = 3\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out =
        run(cricket().arg("--config").arg(&bad).arg("--config-dir").arg(&empty).arg("serve"), Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve accepted an unknown key; stderr:\n{stderr}");
    assert!(stderr.contains("max_concurent_layers") && stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(!dir.path().join("s.sock").exists());

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/cricket.toml");
    let config = |env: &[(&str, &str)]| {
        let mut cmd = cricket();
        cmd.args(["--config", shipped, "--config-dir", "/nonexistent", "config"]).envs(env.iter().copied());
        run(&mut cmd, Duration::from_secs(20))
    };
    let out = config(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: toml::Value =
        toml::from_str(&String::from_utf8(out.stdout).unwrap()).expect("`cricket config` prints TOML");
    assert_eq!(printed["root"].as_str(), Some("/var/lib/cricket"));
    assert_eq!(printed["pull"]["timeout_secs"].as_integer(), Some(0));
    assert_eq!(printed["runtimes"]["default"]["type"].as_str(), Some("linux"));

    let out = config(&[("CRICKET_PULL__TIMEOUT_SECS", "7"), ("CRICKET_LOG__LEVEL", "debug")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("timeout_secs = 7"), "{text}");
    let printed: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(printed["log"]["level"].as_str(), Some("debug"));

    let out = config(&[("CRICKET_PULL__TIMEOUT_SECS", "soon")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("CRICKET"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_overrides_reach_the_daemon() {
    let reg = Registry::start().await;
    reg.push_image("tests/a", "v1", &Image::new(vec![marker_layer("a", Compression::Gzip)])).await;
    let d = Daemon::start_with_env(&[&reg.host()], "", &[("CRICKET_LOG__LEVEL", "cricket=debug,warn")]).await;
    d.pull(&format!("{}/tests/a:v1", reg.host())).await.unwrap();
    let log = d.log();
    assert!(log.contains("DEBUG") && log.contains("layer unpacked"), "no debug output:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_timeout_leaves_no_partial_layer() {
    // A registry that sends half the layer, stalls, then hangs up.
    let layer = busybox_layer();
    let image = Image::new(vec![layer.clone()]);
    let config = image.config();
    let slow = Route {
        stall_after: Some(layer.blob.len() / 2),
        ..Route::new(&format!("/blobs/{}", layer.digest), "application/octet-stream", &layer.blob)
    };
    let fake = fake_registry(vec![
        Route::new("/manifests/v1", OCI_MANIFEST, &image.manifest(&config)),
        Route::new(&format!("/blobs/{}", sha256(&config)), "application/octet-stream", &config),
        slow,
    ])
    .await;
    let d = Daemon::start(&[&fake], "[pull]\ntimeout_secs = 1\nprogress_timeout_secs = 30\n").await;
    let started = Instant::now();
    expect_error(
        d.pull(&format!("{fake}/tests/slow:v1")).await,
        Code::DeadlineExceeded,
        &["timeout_secs"],
        "stalled layer",
    );
    assert!(started.elapsed() < STALL, "the pull outlived pull.timeout_secs: {:?}", started.elapsed());

    // Once the registry has hung up, whatever was unpacked so far must be gone.
    tokio::time::sleep(STALL).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !d.tmp_entries().is_empty() {
        assert!(Instant::now() < deadline, "partial layer left in tmp/: {:?}", d.tmp_entries());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.snapshot_dirs().is_empty() && d.list_images().await.is_empty());
}
