//! The builder's seccomp filter, as classic BPF built without touching the system.
//!
//! Nix's rules (Nix 2.35, `src/libstore/linux/build/linux-derivation-builder.cc`,
//! `setupSeccomp`): `chmod`/`fchmod`/`fchmodat` (and the newer `fchmodat2`) with
//! `S_ISUID` or `S_ISGID` in the mode fail with EPERM, so no setuid or setgid file can
//! enter the store; the `setxattr`, `getxattr` and `listxattr` families fail with
//! ENOTSUP, so no ACL or file capability can either, and the builder sees a file
//! system without extended attributes. We add the four `*xattrat` calls of Linux 6.13
//! (ENOTSUP), io_uring (ENOSYS) and every call newer than [`NEWEST_AUDITED_SYSCALL`]
//! (ENOSYS). Everything else is allowed. A test checks every number here against the
//! C library's headers and `SYS_*` constants.
//!
//! Syscall numbers differ per ABI and a process may switch ABI (`int 0x80`, x32
//! numbers on x86_64), so the filter dispatches on `seccomp_data.arch` and carries a rule
//! table for each ABI the native one can reach: on x86_64 the native and x32 numbers and
//! i386; on aarch64 the native ones. A call from any other ABI kills the process rather
//! than pass unchecked.
//!
//! # Deny list or allow list: the decision
//!
//! Lix (`lix/libstore/platform/linux.cc`, `compileSyscallFilter`) moved to an allow
//! list: about 400 named calls are allowed, the dangerous ones are left out or allowed
//! only with safe arguments, and everything else, new calls included, answers ENOSYS.
//! What that buys is the default for calls nobody has read yet: `fchmodat2` (6.6) and
//! `setxattrat` (6.13) each opened the route Nix's deny list closes, and a deny list
//! lets such a call through until someone adds it. We take that property, not the
//! list: since Linux 5.1 new calls get one number on every ABI, above all older ones,
//! so one range rule per ABI (above [`NEWEST_AUDITED_SYSCALL`]: ENOSYS) gives the same
//! default as Lix's for every future call, and io_uring, which Lix also leaves out,
//! answers ENOSYS. The old calls stay allowed unless a rule names them, as in Nix.
//! Why not the full list: the builder is already confined by namespaces we own (user,
//! mount, PID, network, IPC, UTS), no capabilities outside them, locked read-only
//! mounts, Landlock scoping and `no_new_privs`, and its outputs are copied to fresh
//! inodes before they are checked; an allow list of some 400 names per ABI is a table
//! to keep true for three ABIs that mostly restates what those layers already ensure,
//! and every name wrongly left out breaks some build in a way users see as our bug.
//! Raising [`NEWEST_AUDITED_SYSCALL`] is the audit step: read what the new calls do,
//! add a rule for any that sets a mode, an attribute or escapes a namespace, then move
//! the limit (the C library test names the calls newer than its headers).

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
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
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
const ENOSYS: u32 = 38;

/// The newest syscall number audited for this filter: `removexattrat` (Linux 6.13).
/// Since Linux 5.1 every ABI numbers new calls alike, from 424 up; calls above this one
/// answer ENOSYS (as if the kernel were older) until someone reads what they do and
/// moves the limit. A call that sets an attribute or a mode by a new route (as
/// `fchmodat2` and `setxattrat` did) cannot slip through a deny list that way.
pub const NEWEST_AUDITED_SYSCALL: u32 = 466;

/// `io_uring_setup`, `io_uring_enter`, `io_uring_register` (one number on every ABI).
/// An io_uring carries operations (`IORING_OP_SETXATTR` among them) that no seccomp
/// filter sees, so builders get ENOSYS and use the ordinary calls, as Lix's and
/// Docker's filters do.
const IO_URING_CALLS: [(&str, u32); 3] = [
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
];

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// The bit x32 syscall numbers carry on x86_64.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// What the filter does with one syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Refuse with EPERM when argument `arg` has S_ISUID or S_ISGID.
    RefuseSetidMode { arg: u32 },
    /// Refuse with this errno.
    Errno(u32),
    /// Refuse every number in `nr..end` with ENOSYS.
    NotYetAudited { end: u32 },
}

/// One syscall the filter names: its name in the C library (`SYS_<name>`), its number
/// on one ABI and what the filter does with it.
#[derive(Clone, Copy, Debug)]
struct Rule {
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the C library check"))]
    name: &'static str,
    nr: u32,
    action: Action,
}

fn setid_mode(name: &'static str, nr: u32, arg: u32) -> Rule {
    Rule {
        name,
        nr,
        action: Action::RefuseSetidMode { arg },
    }
}

fn chmod_family(chmod: Option<u32>, fchmod: u32, fchmodat: u32) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(nr) = chmod {
        rules.push(setid_mode("chmod", nr, 1));
    }
    rules.push(setid_mode("fchmod", fchmod, 1));
    rules.push(setid_mode("fchmodat", fchmodat, 2));
    // fchmodat2 (Linux 6.6) has one number on every ABI.
    rules.push(setid_mode("fchmodat2", 452, 2));
    rules
}

/// The classic xattr calls, consecutive from `setxattr` on every ABI. Nix 2.35 answers
/// the first nine with ENOTSUP (`linux-derivation-builder.cc`, `setupSeccomp`): no
/// extended attribute can be set, and a builder that looks for one finds the file
/// system without them, as the NAR format is. `removexattr` and its two siblings are
/// left alone, as Nix does: removing an attribute cannot add anything.
const XATTR_CALLS: [&str; 9] = [
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
];

/// The `*xattrat` calls of Linux 6.13, one number on every ABI. Nix 2.35's filter
/// predates them and lets them through; we refuse all four (`removexattrat` too, so the
/// whole new family answers alike).
const XATTRAT_CALLS: [(&str, u32); 4] = [
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
];

fn xattr_family(setxattr: u32) -> Vec<Rule> {
    let classic = (setxattr..).zip(XATTR_CALLS).map(|(nr, name)| (name, nr));
    classic
        .chain(XATTRAT_CALLS)
        .map(|(name, nr)| Rule {
            name,
            nr,
            action: Action::Errno(ENOTSUP),
        })
        .collect()
}

/// io_uring refused, and every number in `newer` refused as not yet audited.
fn unaudited(newer: &[(u32, u32)]) -> Vec<Rule> {
    let io_uring = IO_URING_CALLS.map(|(name, nr)| Rule {
        name,
        nr,
        action: Action::Errno(ENOSYS),
    });
    let ranges = newer.iter().map(|&(nr, end)| Rule {
        name: "(newer than audited)",
        nr,
        action: Action::NotYetAudited { end },
    });
    io_uring.into_iter().chain(ranges).collect()
}

fn x86_64_rules() -> Vec<Rule> {
    let mut native = chmod_family(Some(90), 91, 268);
    native.extend(xattr_family(188));
    native
}

/// x86_64's native numbers stop below the x32 bit; the x32 numbers carry it and have
/// x32-only calls at 512..=547.
fn x86_64_unaudited() -> Vec<Rule> {
    let x = X32_SYSCALL_BIT;
    let mut rules = unaudited(&[
        (NEWEST_AUDITED_SYSCALL + 1, x),
        (x | (NEWEST_AUDITED_SYSCALL + 1), x | 512),
        (x | 548, u32::MAX),
    ]);
    rules.extend(IO_URING_CALLS.map(|(name, nr)| Rule {
        name,
        nr: nr | x,
        action: Action::Errno(ENOSYS),
    }));
    rules
}

/// The x32 ABI uses the x86_64 numbers of these calls with `X32_SYSCALL_BIT` set.
fn x32_rules() -> Vec<Rule> {
    let mut rules = x86_64_rules();
    for rule in &mut rules {
        rule.nr |= X32_SYSCALL_BIT;
    }
    rules
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

fn single_abi_unaudited() -> Vec<Rule> {
    unaudited(&[(NEWEST_AUDITED_SYSCALL + 1, u32::MAX)])
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
        let nr = rule.nr;
        match rule.action {
            Action::RefuseSetidMode { arg } => {
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
            Action::NotYetAudited { end } => {
                out.push(stmt(BPF_LD_W_ABS, OFF_NR));
                out.push(BpfInsn {
                    code: BPF_JMP_JGE_K,
                    jt: 0,
                    jf: 2,
                    k: nr,
                });
                out.push(BpfInsn {
                    code: BPF_JMP_JGE_K,
                    jt: 1,
                    jf: 0,
                    k: end,
                });
                out.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS));
            }
            Action::Errno(errno) => {
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
            (
                AUDIT_ARCH_X86_64,
                [x86_64_rules(), x32_rules(), x86_64_unaudited()].concat(),
            ),
            (
                AUDIT_ARCH_I386,
                [i386_rules(), single_abi_unaudited()].concat(),
            ),
        ],
        AUDIT_ARCH_AARCH64 => vec![(
            AUDIT_ARCH_AARCH64,
            [aarch64_rules(), single_abi_unaudited()].concat(),
        )],
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
                BPF_JMP_JGE_K => {
                    pc += usize::from(if acc >= insn.k { insn.jt } else { insn.jf });
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
        // setxattr..flistxattr, then setxattrat..removexattrat.
        for nr in (188..=196).chain(463..=466) {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), DENY_ENOTSUP, "{nr}");
        }
        // removexattr and its siblings are allowed, as in Nix.
        for nr in 197..=199 {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), SECCOMP_RET_ALLOW);
        }
        // read, write, openat are fine.
        for nr in [0, 1, 257] {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), SECCOMP_RET_ALLOW);
        }
    }

    /// `#define __NR_<name> <number>` lines of a kernel UAPI header as installed with the
    /// C library, the x32 form `(__X32_SYSCALL_BIT + N)` included.
    fn header_numbers(path: &str) -> std::collections::HashMap<String, u32> {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (the C library's kernel headers)"));
        let mut numbers = std::collections::HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("#define __NR_") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(char::is_whitespace) else {
                continue;
            };
            let value = value.trim();
            let nr = match value.strip_prefix("(__X32_SYSCALL_BIT + ") {
                Some(n) => n
                    .trim_end_matches(')')
                    .parse::<u32>()
                    .map(|n| n | X32_SYSCALL_BIT),
                None => value.parse::<u32>(),
            };
            if let Ok(nr) = nr {
                numbers.insert(name.to_string(), nr);
            }
        }
        numbers
    }

    /// Calls newer than this machine's headers: the kernel release whose syscall tables
    /// gave the number. A header that has the call is checked like any other.
    const NEWER_THAN_HEADERS: [(&str, &str); 5] = [
        ("fchmodat2", "6.6"),
        ("setxattrat", "6.13"),
        ("getxattrat", "6.13"),
        ("listxattrat", "6.13"),
        ("removexattrat", "6.13"),
    ];

    fn check_against_header(rules: &[Rule], header: &str) -> usize {
        let numbers = header_numbers(header);
        assert!(numbers.len() > 300, "{header} has too few syscalls");
        let mut checked = 0;
        for rule in rules {
            match numbers.get(rule.name) {
                Some(&nr) => {
                    assert_eq!(rule.nr, nr, "{} in {header}", rule.name);
                    checked += 1;
                }
                None => assert!(
                    NEWER_THAN_HEADERS.iter().any(|(n, _)| *n == rule.name),
                    "{} is missing from {header}",
                    rule.name
                ),
            }
        }
        checked
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_syscall_number_matches_the_c_library() {
        let dir = "/usr/include/x86_64-linux-gnu/asm";
        let checked = check_against_header(&x86_64_rules(), &format!("{dir}/unistd_64.h"))
            + check_against_header(&x32_rules(), &format!("{dir}/unistd_x32.h"))
            + check_against_header(&i386_rules(), &format!("{dir}/unistd_32.h"))
            + check_against_header(&aarch64_rules(), "/usr/include/asm-generic/unistd.h");
        let io_uring = |rules: Vec<Rule>| -> Vec<Rule> {
            let named = |r: &Rule| matches!(r.action, Action::Errno(_));
            rules.into_iter().filter(named).collect()
        };
        let checked = checked
            + check_against_header(
                &io_uring(single_abi_unaudited()),
                &format!("{dir}/unistd_64.h"),
            )
            + check_against_header(
                &io_uring(single_abi_unaudited()),
                &format!("{dir}/unistd_32.h"),
            )
            + check_against_header(
                &io_uring(single_abi_unaudited()),
                "/usr/include/asm-generic/unistd.h",
            );
        // chmod x3 ABIs, fchmod, fchmodat and nine xattr calls on all four, io_uring x3.
        assert!(
            checked >= 3 + 4 * 11 + 9,
            "only {checked} numbers were checked"
        );
        // The native ABI once more through the libc crate's SYS_* constants.
        let libc_numbers: [(&str, libc::c_long); 5] = [
            ("chmod", libc::SYS_chmod),
            ("fchmod", libc::SYS_fchmod),
            ("fchmodat", libc::SYS_fchmodat),
            ("fchmodat2", libc::SYS_fchmodat2),
            ("setxattr", libc::SYS_setxattr),
        ];
        let native = x86_64_rules();
        for (name, nr) in libc_numbers {
            let rule = native.iter().find(|r| r.name == name).expect(name);
            assert_eq!(i64::from(rule.nr), nr, "{name}");
        }
        for (name, nr) in [
            ("getxattr", libc::SYS_getxattr),
            ("listxattr", libc::SYS_listxattr),
            ("flistxattr", libc::SYS_flistxattr),
        ] {
            let rule = native.iter().find(|r| r.name == name).expect(name);
            assert_eq!(i64::from(rule.nr), nr, "{name}");
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
        assert_eq!(run(&p, i, 234, [0; 6]), DENY_ENOTSUP);
        assert_eq!(run(&p, i, 235, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(run(&p, i, 466, [0; 6]), DENY_ENOTSUP);
        assert_eq!(run(&p, a, 465 | X32_SYSCALL_BIT, [0; 6]), DENY_ENOTSUP);
        assert_eq!(run(&p, i, 15, [0, 0o755, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
    }

    const DENY_ENOSYS: u32 = SECCOMP_RET_ERRNO | ENOSYS;

    #[test]
    fn calls_newer_than_audited_and_io_uring_do_not_exist() {
        let p = builder_filter_for(AUDIT_ARCH_X86_64);
        let (a, i, x) = (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, X32_SYSCALL_BIT);
        for nr in [425, 426, 427, 467, 469, 511, 512, 1000, x - 1] {
            assert_eq!(run(&p, a, nr, [0; 6]), DENY_ENOSYS, "{nr}");
            assert_eq!(run(&p, i, nr, [0; 6]), DENY_ENOSYS, "i386 {nr}");
        }
        for nr in [425, 467, 511, 548, 5000] {
            assert_eq!(run(&p, a, x | nr, [0; 6]), DENY_ENOSYS, "x32 {nr}");
        }
        // The newest audited call keeps its rule; older ones and x32's own are allowed.
        assert_eq!(run(&p, a, 466, [0; 6]), DENY_ENOTSUP);
        for nr in [424, 428, 435, 450, 462] {
            assert_eq!(run(&p, a, nr, [0; 6]), SECCOMP_RET_ALLOW, "{nr}");
            assert_eq!(run(&p, a, x | nr, [0; 6]), SECCOMP_RET_ALLOW, "x32 {nr}");
        }
        for nr in [512, 530, 547] {
            assert_eq!(run(&p, a, x | nr, [0; 6]), SECCOMP_RET_ALLOW, "x32 {nr}");
        }
        let p = builder_filter_for(AUDIT_ARCH_AARCH64);
        assert_eq!(run(&p, AUDIT_ARCH_AARCH64, 467, [0; 6]), DENY_ENOSYS);
        assert_eq!(run(&p, AUDIT_ARCH_AARCH64, 426, [0; 6]), DENY_ENOSYS);
        assert_eq!(run(&p, AUDIT_ARCH_AARCH64, 435, [0; 6]), SECCOMP_RET_ALLOW);
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
