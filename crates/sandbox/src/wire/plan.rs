//! A [`Plan`] on the wire.

use super::codec::{dec_id_maps, enc_id_maps_with, Dec, DecResult, Enc};
use super::PLAN_MAGIC;
use crate::plan::{Exec, IdMapMethod, MountOp, Namespaces, Pasta, Plan, Program};

/// Encodes a plan (without the frame length).
pub fn encode_plan(plan: &Plan) -> Vec<u8> {
    encode_plan_with(plan, &plan.id_maps.method)
}

/// Encodes `plan` as if its id maps were written by `method`: the daemon sends a plan
/// whose slice namespace it already has as [`IdMapMethod::Enter`].
pub fn encode_plan_with(plan: &Plan, method: &IdMapMethod) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(PLAN_MAGIC);
    e.bool(plan.namespaces.net);
    e.bool(plan.namespaces.ipc);
    e.bool(plan.namespaces.uts);
    enc_id_maps_with(&mut e, &plan.id_maps, method);
    e.os(plan.root.as_os_str());
    e.u32(plan.root_mode);
    e.len(plan.mounts.len());
    for op in &plan.mounts {
        enc_mount_op(&mut e, op);
    }
    e.os(&plan.hostname);
    e.os(&plan.domainname);
    enc_exec(&mut e, &plan.exec);
    e.len(plan.reclaim.len());
    for p in &plan.reclaim {
        e.os(p.as_os_str());
    }
    enc_pasta(&mut e, plan.pasta.as_ref());
    e.0
}

/// Decodes a plan; the error says what was malformed.
pub fn decode_plan(bytes: &[u8]) -> Result<Plan, &'static str> {
    let mut d = Dec(bytes);
    if d.take(PLAN_MAGIC.len())? != PLAN_MAGIC {
        return Err("not a sandbox plan");
    }
    let namespaces = Namespaces {
        net: d.bool()?,
        ipc: d.bool()?,
        uts: d.bool()?,
    };
    let id_maps = dec_id_maps(&mut d)?;
    let root = d.path()?;
    let root_mode = d.u32()?;
    let n = d.len()?;
    let mut mounts = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        mounts.push(dec_mount_op(&mut d)?);
    }
    let hostname = d.os()?;
    let domainname = d.os()?;
    let exec = dec_exec(&mut d)?;
    let n = d.len()?;
    let mut reclaim = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        reclaim.push(d.path()?);
    }
    let pasta = dec_pasta(&mut d)?;
    d.end()?;
    Ok(Plan {
        namespaces,
        id_maps,
        root,
        root_mode,
        mounts,
        hostname,
        domainname,
        exec,
        reclaim,
        pasta,
    })
}

/// One mount operation: its kind, then its fields.
fn enc_mount_op(e: &mut Enc, op: &MountOp) {
    match op {
        MountOp::Mkdir { path, mode } => {
            e.u8(1);
            e.os(path.as_os_str());
            e.u32(*mode);
        }
        MountOp::WriteFile {
            path,
            contents,
            mode,
        } => {
            e.u8(2);
            e.os(path.as_os_str());
            e.bytes(contents);
            e.u32(*mode);
        }
        MountOp::Symlink { target, link } => {
            e.u8(3);
            e.os(target.as_os_str());
            e.os(link.as_os_str());
        }
        MountOp::Bind {
            source,
            target,
            read_only,
            optional,
        } => {
            e.u8(4);
            e.os(source.as_os_str());
            e.os(target.as_os_str());
            e.bool(*read_only);
            e.bool(*optional);
        }
        MountOp::Proc { target } => {
            e.u8(5);
            e.os(target.as_os_str());
        }
        MountOp::Tmpfs { target, options } => {
            e.u8(6);
            e.os(target.as_os_str());
            e.bytes(options.as_bytes());
        }
        MountOp::Devpts { target } => {
            e.u8(7);
            e.os(target.as_os_str());
        }
        MountOp::DiskDir { path, mode } => {
            e.u8(9);
            e.os(path.as_os_str());
            e.u32(*mode);
        }
        MountOp::Chown { path, uid, gid } => {
            e.u8(8);
            e.os(path.as_os_str());
            e.u32(*uid);
            e.u32(*gid);
        }
    }
}

fn dec_mount_op(d: &mut Dec) -> DecResult<MountOp> {
    Ok(match d.u8()? {
        1 => MountOp::Mkdir {
            path: d.path()?,
            mode: d.u32()?,
        },
        2 => MountOp::WriteFile {
            path: d.path()?,
            contents: d.bytes()?,
            mode: d.u32()?,
        },
        3 => MountOp::Symlink {
            target: d.path()?,
            link: d.path()?,
        },
        4 => MountOp::Bind {
            source: d.path()?,
            target: d.path()?,
            read_only: d.bool()?,
            optional: d.bool()?,
        },
        5 => MountOp::Proc { target: d.path()? },
        6 => MountOp::Tmpfs {
            target: d.path()?,
            options: String::from_utf8(d.bytes()?).map_err(|_| "tmpfs options not UTF-8")?,
        },
        7 => MountOp::Devpts { target: d.path()? },
        8 => MountOp::Chown {
            path: d.path()?,
            uid: d.u32()?,
            gid: d.u32()?,
        },
        9 => MountOp::DiskDir {
            path: d.path()?,
            mode: d.u32()?,
        },
        _ => return Err("bad mount operation"),
    })
}

/// What the builder runs: program (a path, or a builtin's name), argv, environment,
/// working directory.
fn enc_exec(e: &mut Enc, exec: &Exec) {
    match &exec.program {
        Program::Path(p) => {
            e.u8(0);
            e.os(p.as_os_str());
        }
        Program::Builtin(name) => {
            e.u8(1);
            e.bytes(name.as_bytes());
        }
    }
    e.len(exec.argv.len());
    for a in &exec.argv {
        e.os(a);
    }
    e.len(exec.env.len());
    for (k, v) in &exec.env {
        e.os(k);
        e.os(v);
    }
    e.os(exec.cwd.as_os_str());
}

fn dec_exec(d: &mut Dec) -> DecResult<Exec> {
    let program = match d.u8()? {
        0 => Program::Path(d.path()?),
        1 => Program::Builtin(String::from_utf8(d.bytes()?).map_err(|_| "builtin name not UTF-8")?),
        _ => return Err("bad program kind"),
    };
    let n = d.len()?;
    let mut argv = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        argv.push(d.os()?);
    }
    let n = d.len()?;
    let mut env = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        env.push((d.os()?, d.os()?));
    }
    let cwd = d.path()?;
    Ok(Exec {
        program,
        argv,
        env,
        cwd,
    })
}

/// The network stack: none (0), or pasta (1) with its program and arguments.
fn enc_pasta(e: &mut Enc, pasta: Option<&Pasta>) {
    match pasta {
        None => e.u8(0),
        Some(pasta) => {
            e.u8(1);
            e.os(pasta.program.as_os_str());
            e.len(pasta.args.len());
            for a in &pasta.args {
                e.os(a);
            }
        }
    }
}

fn dec_pasta(d: &mut Dec) -> DecResult<Option<Pasta>> {
    Ok(match d.u8()? {
        0 => None,
        1 => {
            let program = d.path()?;
            let n = d.len()?;
            let mut args = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                args.push(d.os()?);
            }
            Some(Pasta { program, args })
        }
        _ => return Err("bad network stack"),
    })
}
