use std::ffi::OsStr;

use super::*;
use crate::error::PlanError;

fn spec() -> SandboxSpec {
    let mut s = SandboxSpec::new(
        "/var/lib/unrooted/chroots/x".into(),
        "/nix/store".into(),
        "/var/lib/unrooted/builds/x".into(),
        "/nix/store/aaaa-busybox/bin/sh".into(),
    );
    s.host_uid = 1234;
    s.host_gid = 567;
    s.inputs = vec![
        "/nix/store/aaaa-busybox".into(),
        "/nix/store/bbbb-src.tar".into(),
    ];
    s.args = vec!["-e".into(), "builder.sh".into()];
    s
}

#[test]
fn passwd_group_hosts_are_nix_bytes() {
    assert_eq!(
        etc_passwd(Path::new("/build")),
        b"root:x:0:0:Nix build user:/build:/noshell\n\
          nixbld:x:1000:100:Nix build user:/build:/noshell\n\
          nobody:x:65534:65534:Nobody:/:/noshell\n"
    );
    assert_eq!(ETC_GROUP, b"root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n");
    assert_eq!(ETC_HOSTS, b"127.0.0.1 localhost\n::1 localhost\n");
}

#[test]
fn id_maps_are_nix_rootless() {
    let plan = Plan::new(&spec()).unwrap();
    assert_eq!(IdMaps::map_text(&plan.id_maps.uid_map), "1000 1234 1\n");
    assert_eq!(IdMaps::map_text(&plan.id_maps.gid_map), "100 567 1\n");
    assert_eq!(plan.id_maps.method, IdMapMethod::Direct);
    assert!(plan.namespaces.net && plan.namespaces.ipc && plan.namespaces.uts);
    assert_eq!(plan.hostname, "localhost");
    assert_eq!(plan.domainname, "(none)");
    assert_eq!(plan.root_mode, 0o555);
}

fn slice() -> IdSlice {
    IdSlice {
        uid: 100_000,
        gid: 300_000,
        count: 65536,
        newuidmap: "/usr/bin/newuidmap".into(),
        newgidmap: "/usr/bin/newgidmap".into(),
    }
}

#[test]
fn id_range_maps_owner_to_root_and_hands_the_build_dir_to_the_builder() {
    let mut s = spec();
    s.id_slice = Some(slice());
    let plan = Plan::new(&s).unwrap();
    let ids = &plan.id_maps;
    assert_eq!(IdMaps::map_text(&ids.uid_map), "0 1234 1\n1 100001 65535\n");
    assert_eq!(IdMaps::map_text(&ids.gid_map), "0 567 1\n1 300001 65535\n");
    assert!(ids.switch_ids && !ids.nested_range);
    assert_eq!((ids.builder_uid, ids.builder_gid), (1000, 100));
    assert!(matches!(ids.method, IdMapMethod::NewIdMap { .. }));
    assert_eq!(
        plan.mounts[1],
        MountOp::Chown {
            path: "/build".into(),
            uid: 1000,
            gid: 100
        }
    );
    assert!(plan.mounts.contains(&MountOp::Chown {
        path: "/nix/store".into(),
        uid: 0,
        gid: 100
    }));

    s.uid_range = true;
    let ids = Plan::new(&s).unwrap().id_maps;
    assert_eq!(
        IdMaps::map_text(&ids.uid_map),
        "0 100000 65536\n65536 1234 1\n"
    );
    assert_eq!((ids.builder_uid, ids.nested_range), (0, true));

    let r = IdMaps::reclaim(1234, 567, &slice());
    assert_eq!(IdMaps::map_text(&r.uid_map), "0 1234 1\n1 100000 65536\n");

    let mut small = slice();
    small.count = 1000;
    s.id_slice = Some(small);
    assert!(matches!(
        Plan::new(&s),
        Err(PlanError::IdSliceTooSmall { .. })
    ));
    s.id_slice = None;
    assert!(matches!(Plan::new(&s), Err(PlanError::UidRangeUnavailable)));
}

#[test]
fn exec_uses_basename_as_argv0_and_build_dir_as_cwd() {
    let plan = Plan::new(&spec()).unwrap();
    assert_eq!(plan.exec.argv, ["sh", "-e", "builder.sh"]);
    assert_eq!(plan.exec.cwd, Path::new("/build"));
}

#[test]
fn layout_in_order() {
    let plan = Plan::new(&spec()).unwrap();
    let show: Vec<String> = plan
        .mounts
        .iter()
        .map(|op| match op {
            MountOp::Mkdir { path, mode } => format!("mkdir {} {mode:o}", path.display()),
            MountOp::DiskDir { path, mode } => {
                format!("disk dir {} {mode:o}", path.display())
            }
            MountOp::WriteFile { path, mode, .. } => {
                format!("file {} {mode:o}", path.display())
            }
            MountOp::Symlink { target, link } => {
                format!("symlink {} -> {}", link.display(), target.display())
            }
            MountOp::Bind {
                source,
                target,
                read_only,
                optional,
            } => format!(
                "bind {} {}{}{}",
                source.display(),
                target.display(),
                if *read_only { " ro" } else { "" },
                if *optional { " optional" } else { "" }
            ),
            MountOp::Proc { target } => format!("proc {}", target.display()),
            MountOp::Tmpfs { target, options } => {
                format!("tmpfs {} {options}", target.display())
            }
            MountOp::Devpts { target } => format!("devpts {}", target.display()),
            MountOp::Chown { path, uid, gid } => {
                format!("chown {} {uid}:{gid}", path.display())
            }
        })
        .collect();
    assert_eq!(
        show,
        [
            "bind /var/lib/unrooted/builds/x /build",
            "disk dir /tmp 1777",
            "mkdir /etc 555",
            "file /etc/passwd 444",
            "file /etc/group 444",
            "file /etc/hosts 444",
            "mkdir /dev 755",
            "bind /dev/full /dev/full",
            "bind /dev/null /dev/null",
            "bind /dev/random /dev/random",
            "bind /dev/tty /dev/tty",
            "bind /dev/urandom /dev/urandom",
            "bind /dev/zero /dev/zero",
            "mkdir /dev/shm 1777",
            "tmpfs /dev/shm size=50%",
            "mkdir /dev/pts 755",
            "devpts /dev/pts",
            "symlink /dev/fd -> /proc/self/fd",
            "symlink /dev/stdin -> /proc/self/fd/0",
            "symlink /dev/stdout -> /proc/self/fd/1",
            "symlink /dev/stderr -> /proc/self/fd/2",
            "symlink /dev/ptmx -> /dev/pts/ptmx",
            "mkdir /proc 555",
            "proc /proc",
            "mkdir /nix 755",
            "disk dir /nix/store 1775",
            "bind /nix/store/aaaa-busybox /nix/store/aaaa-busybox ro",
            "bind /nix/store/bbbb-src.tar /nix/store/bbbb-src.tar ro",
        ]
    );
}

#[test]
fn network_builds_get_no_private_hosts_and_share_the_netns() {
    let mut s = spec();
    s.network = true;
    s.network_files = vec![
        SandboxPath {
            target: "/etc/resolv.conf".into(),
            source: "/run/systemd/resolve/stub-resolv.conf".into(),
            optional: true,
        },
        SandboxPath::parse(OsStr::new("/etc/hosts?")).unwrap(),
    ];
    let plan = Plan::new(&s).unwrap();
    assert!(!plan.namespaces.net);
    assert!(!plan.mounts.iter().any(
        |op| matches!(op, MountOp::WriteFile { path, .. } if path == Path::new("/etc/hosts"))
    ));
    // Nix 2.8's fixed-output /etc: its own nsswitch.conf, the host's files bound.
    let etc: Vec<&MountOp> = plan
        .mounts
        .iter()
        .skip_while(|op| !matches!(op, MountOp::Mkdir { path, .. } if path == Path::new("/etc")))
        .take(6)
        .collect();
    assert_eq!(
        etc[3],
        &MountOp::WriteFile {
            path: "/etc/nsswitch.conf".into(),
            contents: b"hosts: files dns\nservices: files\n".to_vec(),
            mode: 0o444
        }
    );
    assert_eq!(
        etc[4],
        &MountOp::Bind {
            source: "/run/systemd/resolve/stub-resolv.conf".into(),
            target: "/etc/resolv.conf".into(),
            read_only: true,
            optional: true
        }
    );
    assert_eq!(
        etc[5],
        &MountOp::Bind {
            source: "/etc/hosts".into(),
            target: "/etc/hosts".into(),
            read_only: true,
            optional: true
        }
    );

    // Without the network, the host's files are never bound.
    s.network = false;
    let plan = Plan::new(&s).unwrap();
    assert!(plan.namespaces.net);
    assert!(!plan
        .mounts
        .iter()
        .any(|op| matches!(op, MountOp::Bind { target, .. } if target.starts_with("/etc"))));
    assert!(!plan.mounts.iter().any(
        |op| matches!(op, MountOp::WriteFile { path, .. } if path == Path::new("/etc/nsswitch.conf"))
    ));
}

#[test]
fn pasta_builds_get_their_own_netns_and_the_gateway_as_resolver() {
    let mut s = spec();
    s.network = true;
    s.pasta = Some(Pasta::new("/usr/bin/pasta".into()));
    s.resolv_conf = Some(pasta_resolv_conf(
        b"# generated\nnameserver 127.0.0.53\nsearch example.org\nnameserver ::1\noptions edns0",
    ));
    let plan = Plan::new(&s).unwrap();
    assert!(plan.namespaces.net);
    assert_eq!(
        plan.pasta.as_ref().unwrap().program,
        Path::new("/usr/bin/pasta")
    );
    let args: Vec<&str> = plan
        .pasta
        .as_ref()
        .unwrap()
        .args
        .iter()
        .map(|a| a.to_str().unwrap())
        .collect();
    // No port is forwarded either way.
    for flag in ["-t", "-u", "-T", "-U"] {
        let i = args.iter().position(|a| *a == flag).unwrap();
        assert_eq!(args[i + 1], "none", "{flag}");
    }
    assert!(plan.mounts.contains(&MountOp::WriteFile {
        path: "/etc/resolv.conf".into(),
        contents: b"# generated\nsearch example.org\noptions edns0\nnameserver 169.254.1.1\n"
            .to_vec(),
        mode: 0o444,
    }));
    // Without the network, pasta is not planned.
    s.network = false;
    assert_eq!(Plan::new(&s).unwrap().pasta, None);
}

#[test]
fn host_network_files_resolve_links_and_skip_missing_files() {
    for f in host_network_files() {
        assert!(f.optional);
        assert!(f.target.starts_with("/etc"));
        let meta = std::fs::symlink_metadata(&f.source).unwrap();
        assert!(!meta.file_type().is_symlink(), "{}", f.source.display());
        assert!(
            std::fs::canonicalize(&f.target).unwrap() == f.source,
            "{}",
            f.target.display()
        );
    }
}

#[test]
fn builtin_plans_call_the_builtin_instead_of_a_program() {
    let mut s = spec();
    s.builder = "builtin:buildenv".into();
    assert!(matches!(Plan::new(&s), Err(PlanError::NotAbsolute { .. })));
    s.builtin = Some("buildenv".into());
    let plan = Plan::new(&s).unwrap();
    assert_eq!(plan.exec.program, Program::Builtin("buildenv".into()));
    assert_eq!(plan.exec.argv, ["builtin:buildenv"]);
    assert_eq!(plan.exec.cwd, Path::new("/build"));
    // The same sandbox as a program gets.
    s.builtin = None;
    s.builder = "/nix/store/aaaa-busybox/bin/sh".into();
    assert_eq!(Plan::new(&s).unwrap().mounts, plan.mounts);
}

#[test]
fn sandbox_paths_parse_and_bind_read_only() {
    let p = SandboxPath::parse(OsStr::new("/bin/sh=/nix/store/cccc-bash/bin/bash")).unwrap();
    assert_eq!(p.target, Path::new("/bin/sh"));
    assert_eq!(p.source, Path::new("/nix/store/cccc-bash/bin/bash"));
    assert!(!p.optional);
    let p = SandboxPath::parse(OsStr::new("/dev/kvm?")).unwrap();
    assert_eq!(
        (p.target.as_path(), p.optional),
        (Path::new("/dev/kvm"), true)
    );
    assert_eq!(p.source, Path::new("/dev/kvm"));
    for bad in ["", "?", "=/x", "/x="] {
        assert!(SandboxPath::parse(OsStr::new(bad)).is_err(), "{bad}");
    }

    let mut s = spec();
    s.sandbox_paths = vec![
        SandboxPath::parse(OsStr::new("/usr/bin/env=/bin/env?")).unwrap(),
        SandboxPath::parse(OsStr::new("/nix/store/aaaa-busybox")).unwrap(),
    ];
    let plan = Plan::new(&s).unwrap();
    let tail: Vec<&MountOp> = plan.mounts.iter().rev().take(3).collect();
    assert_eq!(
        tail[0],
        &MountOp::Bind {
            source: "/bin/env".into(),
            target: "/usr/bin/env".into(),
            read_only: true,
            optional: true
        }
    );
    assert_eq!(
        tail[1],
        &MountOp::Mkdir {
            path: "/usr/bin".into(),
            mode: 0o755
        }
    );
}

#[test]
fn dev_sandbox_path_replaces_minimal_dev() {
    let mut s = spec();
    s.sandbox_paths = vec![SandboxPath::parse(OsStr::new("/dev")).unwrap()];
    let plan = Plan::new(&s).unwrap();
    assert!(!plan
        .mounts
        .iter()
        .any(|op| matches!(op, MountOp::Devpts { .. })));
}

#[test]
fn rejects_unsafe_paths() {
    let mut s = spec();
    s.inputs.push("/nix/store/../../etc".into());
    assert!(matches!(Plan::new(&s), Err(PlanError::NotNormal { .. })));
    let mut s = spec();
    s.inputs.push("/etc/shadow".into());
    assert!(matches!(
        Plan::new(&s),
        Err(PlanError::InputOutsideStore { .. })
    ));
    let mut s = spec();
    s.inputs.push("/nix/store/aaaa-busybox/bin".into());
    assert!(matches!(
        Plan::new(&s),
        Err(PlanError::InputOutsideStore { .. })
    ));
    let mut s = spec();
    s.sandbox_paths = vec![SandboxPath::parse(OsStr::new("/build=/tmp")).unwrap()];
    assert!(matches!(Plan::new(&s), Err(PlanError::Duplicate { .. })));
    let mut s = spec();
    s.sandbox_paths = vec![SandboxPath::parse(OsStr::new("relative=/tmp")).unwrap()];
    assert!(matches!(Plan::new(&s), Err(PlanError::NotAbsolute { .. })));
    let mut s = spec();
    s.store_dir = "/nix//store".into();
    assert!(matches!(Plan::new(&s), Err(PlanError::NotNormal { .. })));
}

#[test]
fn base_env_is_nix() {
    let env = nix_base_env(Path::new("/nix/store"), Path::new("/build"), 4);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "PATH",
            "HOME",
            "NIX_STORE",
            "NIX_BUILD_CORES",
            "NIX_BUILD_TOP",
            "TMPDIR",
            "TEMPDIR",
            "TMP",
            "TEMP",
            "PWD",
            "NIX_LOG_FD",
            "TERM"
        ]
    );
    assert_eq!(env[0].1, "/path-not-set");
    assert_eq!(env[1].1, "/homeless-shelter");
    assert_eq!(env[3].1, "4");
    assert_eq!(env[11].1, "xterm-256color");
}
