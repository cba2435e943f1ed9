//! The builder's seccomp filter, as classic BPF built without touching the system.
//!
//! Nix's rules (`store-formats.md` §4.10): `chmod`/`fchmod`/`fchmodat` (and the newer
//! `fchmodat2`) with `S_ISUID` or `S_ISGID` in the mode fail with EPERM, so no setuid or
//! setgid file can enter the store; the `setxattr` family (and `setxattrat`) fails with
//! ENOTSUP, so no ACL or file capability can either. Everything else is allowed.
//!
//! Syscall numbers differ per ABI and a process may switch ABI (`int 0x80`, x32
//! numbers on x86_64), so the filter dispatches on `seccomp_data.arch` and carries a rule
//! table for each ABI the native one can reach: on x86_64 the native and x32 numbers and
//! i386; on aarch64 the native ones. A call from any other ABI kills the process rather
//! than pass unchecked.

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

/// `BPF_LD | BPF_W | BPF_ABS` (the first two are 0).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets in `struct seccomp_data`: nr, arch, then u64 args from 16 (the low word
/// first on little-endian machines).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

const S_ISUID_OR_S_ISGID: u32 = 0o6000;
const EPERM: u32 = 1;
const ENOTSUP: u32 = 95;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// The bit x32 syscall numbers carry on x86_64.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[derive(Clone, Copy)]
enum Rule {
    /// Refuse with EPERM when argument `arg` has S_ISUID or S_ISGID.
    SetidMode { nr: u32, arg: u32 },
    /// Refuse with this errno.
    Errno { nr: u32, errno: u32 },
}

fn chmod_family(chmod: Option<u32>, fchmod: u32, fchmodat: u32) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(nr) = chmod {
        rules.push(Rule::SetidMode { nr, arg: 1 });
    }
    rules.push(Rule::SetidMode { nr: fchmod, arg: 1 });
    rules.push(Rule::SetidMode {
        nr: fchmodat,
        arg: 2,
    });
    // fchmodat2 (Linux 6.6) has one number on every ABI.
    rules.push(Rule::SetidMode { nr: 452, arg: 2 });
    rules
}

fn xattr_family(setxattr: u32) -> Vec<Rule> {
    // setxattr, lsetxattr, fsetxattr are consecutive on every ABI; setxattrat (6.13)
    // has one number everywhere.
    [setxattr, setxattr + 1, setxattr + 2, 463]
        .into_iter()
        .map(|nr| Rule::Errno { nr, errno: ENOTSUP })
        .collect()
}

fn x86_64_rules() -> Vec<Rule> {
    let mut native = chmod_family(Some(90), 91, 268);
    native.extend(xattr_family(188));
    let x32: Vec<Rule> = native
        .iter()
        .map(|r| match *r {
            Rule::SetidMode { nr, arg } => Rule::SetidMode {
                nr: nr | X32_SYSCALL_BIT,
                arg,
            },
            Rule::Errno { nr, errno } => Rule::Errno {
                nr: nr | X32_SYSCALL_BIT,
                errno,
            },
        })
        .collect();
    native.extend(x32);
    native
}

fn i386_rules() -> Vec<Rule> {
    let mut r = chmod_family(Some(15), 94, 306);
    r.extend(xattr_family(226));
    r
}

fn aarch64_rules() -> Vec<Rule> {
    let mut r = chmod_family(None, 52, 53);
    r.extend(xattr_family(5));
    r
}

fn emit_rules(rules: &[Rule]) -> Vec<BpfInsn> {
    let stmt = |code, k| BpfInsn {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let mut out = Vec::new();
    for rule in rules {
        match *rule {
            Rule::SetidMode { nr, arg } => {
                out.push(stmt(BPF_LD_W_ABS, OFF_NR));
                out.push(BpfInsn {
                    code: BPF_JMP_JEQ_K,
                    jt: 0,
                    jf: 4,
                    k: nr,
                });
                out.push(stmt(BPF_LD_W_ABS, off_arg_low(arg)));
                out.push(BpfInsn {
                    code: BPF_JMP_JSET_K,
                    jt: 0,
                    jf: 1,
                    k: S_ISUID_OR_S_ISGID,
                });
                out.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM));
                out.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
            }
            Rule::Errno { nr, errno } => {
                out.push(stmt(BPF_LD_W_ABS, OFF_NR));
                out.push(BpfInsn {
                    code: BPF_JMP_JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: nr,
                });
                out.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | errno));
            }
        }
    }
    out.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    out
}

/// The filter for ABIs reachable from `native_arch` (an `AUDIT_ARCH_*` value).
pub fn builder_filter_for(native_arch: u32) -> Vec<BpfInsn> {
    let tables: Vec<(u32, Vec<Rule>)> = match native_arch {
        AUDIT_ARCH_X86_64 => vec![
            (AUDIT_ARCH_X86_64, x86_64_rules()),
            (AUDIT_ARCH_I386, i386_rules()),
        ],
        AUDIT_ARCH_AARCH64 => vec![(AUDIT_ARCH_AARCH64, aarch64_rules())],
        _ => Vec::new(),
    };
    let mut prog = vec![BpfInsn {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: OFF_ARCH,
    }];
    for (arch, rules) in tables {
        let block = emit_rules(&rules);
        // Classic BPF jumps are 8-bit; the tables are far smaller than that.
        let skip = u8::try_from(block.len()).expect("seccomp rule block fits a BPF jump");
        prog.push(BpfInsn {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: skip,
            k: arch,
        });
        prog.extend(block);
    }
    prog.push(BpfInsn {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: SECCOMP_RET_KILL_PROCESS,
    });
    prog
}

/// The native `AUDIT_ARCH_*` of this build, or `None` for an architecture without rule
/// tables (the sandbox then refuses to start rather than run unfiltered).
pub fn native_arch() -> Option<u32> {
    if cfg!(target_arch = "x86_64") {
        Some(AUDIT_ARCH_X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(AUDIT_ARCH_AARCH64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of classic BPF the filter uses over a `seccomp_data`.
    fn run(prog: &[BpfInsn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = prog[pc];
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    let k = insn.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_JMP_JEQ_K => {
                    pc += usize::from(if acc == insn.k { insn.jt } else { insn.jf });
                }
                BPF_JMP_JSET_K => {
                    pc += usize::from(if acc & insn.k != 0 { insn.jt } else { insn.jf });
                }
                BPF_RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const DENY_EPERM: u32 = SECCOMP_RET_ERRNO | EPERM;
    const DENY_ENOTSUP: u32 = SECCOMP_RET_ERRNO | ENOTSUP;

    #[test]
    fn x86_64_setid_chmods_are_refused() {
        let p = builder_filter_for(AUDIT_ARCH_X86_64);
        let a = AUDIT_ARCH_X86_64;
        assert_eq!(run(&p, a, 90, [0, 0o4755, 0, 0, 0, 0]), DENY_EPERM);
        assert_eq!(run(&p, a, 90, [0, 0o2755, 0, 0, 0, 0]), DENY_EPERM);
        assert_eq!(run(&p, a, 90, [0, 0o1755, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(run(&p, a, 90, [0, 0o755, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(run(&p, a, 91, [3, 0o6755, 0, 0, 0, 0]), DENY_EPERM);
        assert_eq!(run(&p, a, 268, [0, 0, 0o4755, 0, 0, 0]), DENY_EPERM);
        assert_eq!(
            run(&p, a, 268, [0, 0o4755, 0o755, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(run(&p, a, 452, [0, 0, 0o4755, 0, 0, 0]), DENY_EPERM);
        // The high word of the argument is not part of mode_t.
        assert_eq!(
            run(&p, a, 90, [0, 0o4755 << 32, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn x86_64_xattrs_are_unsupported() {
        let p = builder_filter_for(AUDIT_ARCH_X86_64);
        for nr in [188, 189, 190, 463] {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), DENY_ENOTSUP, "{nr}");
        }
        // getxattr is fine.
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 191, [0; 6]), SECCOMP_RET_ALLOW);
        // read, write, openat are fine.
        for nr in [0, 1, 257] {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), SECCOMP_RET_ALLOW);
        }
    }

    #[test]
    fn x32_and_i386_are_covered() {
        let p = builder_filter_for(AUDIT_ARCH_X86_64);
        let a = AUDIT_ARCH_X86_64;
        assert_eq!(
            run(&p, a, 90 | X32_SYSCALL_BIT, [0, 0o4755, 0, 0, 0, 0]),
            DENY_EPERM
        );
        assert_eq!(run(&p, a, 188 | X32_SYSCALL_BIT, [0; 6]), DENY_ENOTSUP);
        let i = AUDIT_ARCH_I386;
        assert_eq!(run(&p, i, 15, [0, 0o4755, 0, 0, 0, 0]), DENY_EPERM);
        assert_eq!(run(&p, i, 94, [0, 0o2000, 0, 0, 0, 0]), DENY_EPERM);
        assert_eq!(run(&p, i, 306, [0, 0, 0o4000, 0, 0, 0]), DENY_EPERM);
        assert_eq!(run(&p, i, 226, [0; 6]), DENY_ENOTSUP);
        assert_eq!(run(&p, i, 228, [0; 6]), DENY_ENOTSUP);
        assert_eq!(run(&p, i, 15, [0, 0o755, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn unknown_abis_are_killed() {
        let p = builder_filter_for(AUDIT_ARCH_X86_64);
        assert_eq!(
            run(&p, AUDIT_ARCH_AARCH64, 52, [0; 6]),
            SECCOMP_RET_KILL_PROCESS
        );
        let p = builder_filter_for(AUDIT_ARCH_AARCH64);
        assert_eq!(
            run(&p, AUDIT_ARCH_AARCH64, 52, [0, 0o4755, 0, 0, 0, 0]),
            DENY_EPERM
        );
        assert_eq!(run(&p, AUDIT_ARCH_AARCH64, 5, [0; 6]), DENY_ENOTSUP);
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, 90, [0; 6]),
            SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn native_arch_is_known_here() {
        assert!(native_arch().is_some());
    }
}
