use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::*;
use crate::error::Step;
use crate::plan::{IdMapMethod, Program, SandboxPath, SandboxSpec};

fn plan() -> Plan {
    let mut s = SandboxSpec::new(
        "/r".into(),
        "/nix/store".into(),
        "/b".into(),
        "/nix/store/aaaa-x/bin/sh".into(),
    );
    s.inputs = vec!["/nix/store/aaaa-x".into()];
    s.sandbox_paths = vec![SandboxPath::parse("/bin/sh=/x?".as_ref()).unwrap()];
    s.env = vec![("A".into(), OsString::from_vec(vec![0xff, b'=', 0]))];
    s.args = vec!["-c".into(), "echo hi".into()];
    let mut p = Plan::new(&s).unwrap();
    p.id_maps.method = IdMapMethod::NewIdMap {
        newuidmap: "/usr/bin/newuidmap".into(),
        newgidmap: "/usr/bin/newgidmap".into(),
    };
    p
}

#[test]
fn plan_round_trips() {
    let p = plan();
    let mut buf = Vec::new();
    write_plan(&mut buf, &p).unwrap();
    assert_eq!(read_plan(&mut buf.as_slice()).unwrap(), p);
}

#[test]
fn a_plan_carries_its_namespace_and_log_descriptors() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let p = plan();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    // Any descriptor shows it travels: this file's identity must come out.
    let file = std::fs::File::open("/proc/self/ns/user").unwrap();
    let log = std::fs::File::open("/dev/null").unwrap();
    send_plan(a.as_fd(), &p, Some(file.as_fd()), Some(log.as_fd())).unwrap();
    let (request, fds) = read_request_with_fds(b.as_fd()).unwrap();
    let Request::Build(got) = request else {
        panic!("a build request")
    };
    assert_eq!(got.id_maps.method, IdMapMethod::Enter);
    let mut expected = p.clone();
    expected.id_maps.method = IdMapMethod::Enter;
    assert_eq!(*got, expected);
    // Both descriptors, in order: the same files came out.
    let same = |a: &std::fs::File, b: &std::fs::File| {
        let (m1, m2) = (a.metadata().unwrap(), b.metadata().unwrap());
        (m1.dev(), m1.ino()) == (m2.dev(), m2.ino())
    };
    let got: Vec<std::fs::File> = fds.into_iter().map(std::fs::File::from).collect();
    assert_eq!(got.len(), 2);
    assert!(same(&got[0], &file) && same(&got[1], &log));
    // Without a namespace the plan keeps its method, and the log comes alone.
    send_plan(a.as_fd(), &p, None, Some(log.as_fd())).unwrap();
    let (request, fds) = read_request_with_fds(b.as_fd()).unwrap();
    assert_eq!(request, Request::Build(Box::new(p.clone())));
    assert_eq!(fds.len(), 1);
    let only = std::fs::File::from(fds.into_iter().next().unwrap());
    assert!(same(&only, &log));
    // A frame sent without any carries none.
    send_map_namespace(a.as_fd(), &p.id_maps).unwrap();
    let (request, fds) = read_request_with_fds(b.as_fd()).unwrap();
    assert_eq!(
        request,
        Request::MapNamespace {
            id_maps: p.id_maps.clone()
        }
    );
    assert!(fds.is_empty());
    // A report with a descriptor, then one without, then the end.
    Report::Exited { code: 0 }
        .send_with_fd(a.as_fd(), Some(file.as_fd()))
        .unwrap();
    Report::Signaled { signal: 9 }
        .send_with_fd(a.as_fd(), None)
        .unwrap();
    drop(a);
    let (r, fd) = Report::read_with_fd(b.as_fd()).unwrap();
    assert_eq!(r, Some(Report::Exited { code: 0 }));
    assert!(fd.is_some());
    let (r, fd) = Report::read_with_fd(b.as_fd()).unwrap();
    assert_eq!(r, Some(Report::Signaled { signal: 9 }));
    assert!(fd.is_none());
    let (r, fd) = Report::read_with_fd(b.as_fd()).unwrap();
    assert!(r.is_none() && fd.is_none());
}

#[test]
fn builtin_network_plans_round_trip() {
    let mut s = SandboxSpec::new(
        "/r".into(),
        "/nix/store".into(),
        "/b".into(),
        "builtin:fetchurl".into(),
    );
    s.builtin = Some("fetchurl".into());
    s.network = true;
    s.network_files = vec![SandboxPath::parse("/etc/hosts".as_ref()).unwrap()];
    let p = Plan::new(&s).unwrap();
    assert_eq!(p.exec.program, Program::Builtin("fetchurl".into()));
    let body = encode_plan(&p);
    assert_eq!(decode_plan(&body), Ok(p));
    for n in 0..body.len() {
        assert!(decode_plan(&body[..n]).is_err(), "{n}");
    }
    // On pasta's network: the program and its arguments travel with the plan.
    s.pasta = Some(crate::plan::Pasta::new("/usr/bin/pasta".into()));
    let p = Plan::new(&s).unwrap();
    assert!(p.namespaces.net && p.pasta.is_some());
    let body = encode_plan(&p);
    assert_eq!(decode_plan(&body), Ok(p));
    for n in 0..body.len() {
        assert!(decode_plan(&body[..n]).is_err(), "{n}");
    }
}

#[test]
fn ranged_plans_and_reclaims_round_trip() {
    let mut s = SandboxSpec::new(
        "/r".into(),
        "/nix/store".into(),
        "/b".into(),
        "/nix/store/aaaa-x/bin/sh".into(),
    );
    let slice = crate::plan::IdSlice {
        uid: 100_000,
        gid: 200_000,
        count: 65536,
        newuidmap: "/usr/bin/newuidmap".into(),
        newgidmap: "/usr/bin/newgidmap".into(),
    };
    s.id_slice = Some(slice.clone());
    let p = Plan::new(&s).unwrap();
    let mut buf = Vec::new();
    write_plan(&mut buf, &p).unwrap();
    assert_eq!(read_plan(&mut buf.as_slice()).unwrap(), p);

    let ids = IdMaps::reclaim(1000, 1000, &slice);
    let paths = vec![PathBuf::from("/r"), PathBuf::from("/b")];
    let body = encode_reclaim(&ids, &paths);
    assert_eq!(
        decode_request(&body),
        Ok(Request::Reclaim {
            id_maps: ids,
            paths
        })
    );
    for n in RECLAIM_MAGIC.len()..body.len() {
        assert!(decode_request(&body[..n]).is_err(), "{n}");
    }
}

#[test]
fn every_truncation_is_an_error() {
    let body = encode_plan(&plan());
    for n in 0..body.len() {
        assert!(decode_plan(&body[..n]).is_err(), "{n}");
    }
    let mut extra = body.clone();
    extra.push(0);
    assert_eq!(decode_plan(&extra), Err("trailing bytes"));
}

#[test]
fn oversized_frames_are_refused() {
    let mut buf = (MAX_PLAN_BYTES + 1).to_le_bytes().to_vec();
    buf.extend_from_slice(&[0; 16]);
    assert!(read_plan(&mut buf.as_slice()).is_err());
}

#[test]
fn reports_round_trip() {
    let reports = [
        Report::Started { pid: 4242 },
        Report::Failed {
            step: Step::RemountingReadOnly,
            path: Some("/nix/store/x".into()),
            errno: 1,
        },
        Report::Failed {
            step: Step::WritingUidMap,
            path: None,
            errno: 13,
        },
        Report::NotLocked { errno: 0 },
        Report::Exited { code: 3 },
        Report::Signaled { signal: 9 },
    ];
    let mut buf = Vec::new();
    for r in &reports {
        buf.extend(r.encode());
    }
    let mut rd = buf.as_slice();
    for r in &reports {
        assert_eq!(Report::read(&mut rd).unwrap().as_ref(), Some(r));
    }
    assert_eq!(Report::read(&mut rd).unwrap(), None);
    assert!(Report::decode(b"Z").is_err());
    assert!(Report::decode(b"F\xff\x00\x00\x00\x00\x00").is_err());
}
