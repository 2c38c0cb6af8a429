// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `persistence()` against the real filesystems of this host: /dev/shm is
//! tmpfs, /var/tmp and the target directory are on the ext4 root.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use cpr_memory::{
    Backing, Error, GuestRam, Medium, OpenMode, Persistence, RamBlock, RamBlockList, page_size,
    persistence,
};

fn file_block(path: &Path, shared: bool) -> RamBlock {
    RamBlock::builder("pc.ram", page_size())
        .file(path)
        .shared(shared)
        .build()
        .unwrap()
}

#[test]
fn dev_shm_file_survives_restart_not_reboot() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("x");
    File::create(&path).unwrap();
    let r = persistence(&file_block(&path, true)).unwrap();
    assert_eq!(r.medium, Medium::Tmpfs);
    assert_eq!(r.persistence, Persistence::UntilHostReboot);
    assert!(r.persistence.survives_process_restart());
    assert!(!r.persistence.survives_host_reboot());
    assert_eq!(
        r.to_string(),
        format!(
            "RAM block pc.ram is backed by tmpfs {}: it survives a process restart but not a host reboot",
            path.display()
        )
    );
}

#[test]
fn dev_shm_file_not_created_yet_is_classified_by_its_directory() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let r = persistence(&file_block(&dir.path().join("later"), true)).unwrap();
    assert_eq!(r.persistence, Persistence::UntilHostReboot);
}

fn assert_disk(dir: &Path) {
    let path = dir.join("ram");
    // Before and after the file exists.
    for _ in 0..2 {
        let r = persistence(&file_block(&path, true)).unwrap();
        assert!(
            matches!(r.medium, Medium::DiskFs { .. }),
            "{} is expected on a disk filesystem here (ext4): {:?}",
            dir.display(),
            r.medium
        );
        assert_eq!(
            r.persistence,
            Persistence::AcrossHostReboot { needs_sync: true }
        );
        assert!(r.persistence.survives_host_reboot());
        assert!(
            r.to_string()
                .ends_with("it survives a host reboot once synced")
        );
        File::create(&path).unwrap();
    }
}

#[test]
fn var_tmp_file_survives_reboot_once_synced() {
    assert_disk(tempfile::tempdir_in("/var/tmp").unwrap().path());
}

#[test]
fn target_tmpdir_file_survives_reboot_once_synced() {
    assert_disk(
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .path(),
    );
}

#[test]
fn private_mapping_of_a_persistent_file_is_process_lifetime() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let r = persistence(&file_block(&dir.path().join("ram"), false)).unwrap();
    assert!(matches!(r.medium, Medium::DiskFs { .. }));
    assert_eq!(r.persistence, Persistence::ProcessLifetime);
    assert!(r.to_string().contains("mapped private"), "{r}");
}

#[test]
fn anonymous_and_memfd_are_process_lifetime() {
    for shared in [false, true] {
        let anon = RamBlock::builder("pc.ram", page_size())
            .shared(shared)
            .build()
            .unwrap();
        let r = persistence(&anon).unwrap();
        assert_eq!(r.persistence, Persistence::ProcessLifetime);
        assert!(!r.persistence.survives_process_restart());
        assert_eq!(
            r.to_string(),
            "RAM block pc.ram is backed by anonymous memory: it is lost when the process exits"
        );
    }
    let memfd = RamBlock::builder("mem0", page_size())
        .backing(Backing::Memfd { name: "m".into() })
        .shared(true)
        .build()
        .unwrap();
    let r = persistence(&memfd).unwrap();
    assert_eq!(
        (r.medium.clone(), r.persistence),
        (Medium::Memfd, Persistence::ProcessLifetime)
    );
    assert!(r.to_string().contains("descriptor is passed on"), "{r}");
}

#[test]
fn inherited_fds_are_classified_by_what_they_refer_to() {
    // A memfd handed over: still only as long as someone holds it.
    let memfd = RamBlock::builder("mem0", page_size())
        .backing(Backing::Memfd { name: "m".into() })
        .shared(true)
        .build()
        .unwrap();
    let ram = GuestRam::map(
        &RamBlockList::from_blocks([memfd]).unwrap(),
        OpenMode::CreateNew,
    )
    .unwrap();
    let fd = ram.blocks()[0].fd().unwrap().try_clone_to_owned().unwrap();
    let inherited = |fd: OwnedFd| {
        RamBlock::builder("pc.ram", page_size())
            .backing(Backing::InheritedFd(Arc::new(fd)))
            .shared(true)
            .build()
            .unwrap()
    };
    assert_eq!(persistence(&inherited(fd)).unwrap().medium, Medium::Memfd);

    // A /dev/shm file handed over.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let f = File::create(dir.path().join("x")).unwrap();
    let r = persistence(&inherited(OwnedFd::from(f))).unwrap();
    assert_eq!(r.medium, Medium::Tmpfs);
    assert_eq!(r.persistence, Persistence::UntilHostReboot);
}

#[test]
fn missing_directory_is_an_error_naming_the_block() {
    let err = persistence(&file_block(Path::new("/nonexistent-cpr-dir/ram"), true)).unwrap_err();
    assert!(
        matches!(&err, Error::Stat { block, what, .. } if block == "pc.ram" && what.contains("nonexistent")),
        "{err:?}"
    );
}
