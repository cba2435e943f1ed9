//! `unrooted-sandbox`: the sandbox helper (`helper`, started by the daemon with a plan on
//! stdin) and a debugging verb (`run`) that runs one command in a sandbox built from
//! arguments; the integration tests drive the sandbox through it.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use unrooted_sandbox::{exit_code, helper_main, remove_tree, Sandbox, SandboxPath, SandboxRun};

const USAGE: &str = "usage: unrooted-sandbox helper
       unrooted-sandbox run --store-dir DIR --build-dir DIR [--input PATH]... \\
           [--sandbox-path TARGET=SOURCE[?]]... [--network] [--pasta PATH] [--env NAME=VALUE]... \\
           [--cores N] [--work-dir DIR] [--keep-root] [--remove-build-dir] [--leak-fd] \\
           [--timeout-ms N] -- BUILDER [ARGS]...
       unrooted-sandbox probe CALL PATH
           (CALL: setxattr lsetxattr fsetxattr getxattr listxattr removexattr
            setxattrat getxattrat listxattrat removexattrat
            io_uring_setup open_tree_attr)";

/// The `*xattrat` calls of Linux 6.13, one number on every ABI.
const XATTRAT_NUMBERS: [(&str, libc::c_long); 4] = [
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
];

/// Runs one system call the shell cannot make and prints `ok` or `errno=N`, so tests
/// check the exact errno a builder gets.
fn probe(args: Vec<OsString>) -> ExitCode {
    use rustix::fs::XattrFlags;
    if let Some(result) = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(unrooted_sandbox::call_with_no_memory)
    {
        match result {
            Ok(v) => println!("ok {v}"),
            Err(e) => println!("errno={}", e.raw_os_error().unwrap_or(0)),
        }
        return ExitCode::SUCCESS;
    }
    let (Some(op), Some(path)) = (args.first().and_then(|a| a.to_str()), args.get(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let path = std::path::Path::new(path);
    let (name, value) = ("user.unrooted", b"1".as_slice());
    let result = match op {
        "setxattr" => rustix::fs::setxattr(path, name, value, XattrFlags::empty()),
        "lsetxattr" => rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()),
        "fsetxattr" => std::fs::File::open(path)
            .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
            .and_then(|f| rustix::fs::fsetxattr(&f, name, value, XattrFlags::empty())),
        "getxattr" => rustix::fs::getxattr(path, name, &mut [0u8; 16]).map(drop),
        "listxattr" => rustix::fs::listxattr(path, &mut [0u8; 256]).map(drop),
        "removexattr" => rustix::fs::removexattr(path, name),
        other => match XATTRAT_NUMBERS.iter().find(|(n, _)| *n == other) {
            Some(&(_, nr)) => {
                let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                };
                unrooted_sandbox::xattrat_by_number(nr, &c_path)
                    .map(drop)
                    .map_err(|e| {
                        rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)
                    })
            }
            None => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => println!("ok"),
        Err(e) => println!("errno={}", e.raw_os_error()),
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some("helper") => helper_main(),
        Some("probe") => probe(args.collect()),
        Some("run") => match run(args.collect()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("unrooted-sandbox: {e}");
                let mut source = std::error::Error::source(&*e);
                while let Some(s) = source {
                    eprintln!("  caused by: {s}");
                    source = s.source();
                }
                ExitCode::from(125)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `run`'s command line: the sandbox to make, and what only this front end does.
struct RunArgs {
    store_dir: Option<PathBuf>,
    build_dir: Option<PathBuf>,
    run: SandboxRun,
    keep_root: bool,
    remove_build_dir: bool,
    leak_fd: bool,
    timeout: Option<std::time::Duration>,
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn parse(args: Vec<OsString>) -> AnyResult<RunArgs> {
    let mut r = RunArgs {
        store_dir: None,
        build_dir: None,
        run: SandboxRun {
            store_dir: PathBuf::new(),
            build_dir: PathBuf::new(),
            inputs: Vec::new(),
            sandbox_paths: Vec::new(),
            network: false,
            pasta: None,
            host_network_files: false,
            env: Vec::new(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            work_dir: std::env::temp_dir(),
            command: Vec::new(),
        },
        keep_root: false,
        remove_build_dir: false,
        leak_fd: false,
        timeout: None,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg:?} needs a value\n{USAGE}"))
        };
        match arg.to_str() {
            Some("--store-dir") => r.store_dir = Some(value()?.into()),
            Some("--build-dir") => r.build_dir = Some(value()?.into()),
            Some("--input") => r.run.inputs.push(value()?.into()),
            Some("--sandbox-path") => r.run.sandbox_paths.push(SandboxPath::parse(&value()?)?),
            Some("--network") => r.run.network = true,
            Some("--pasta") => r.run.pasta = Some(value()?.into()),
            Some("--env") => r.run.env.push(env_entry(&value()?)?),
            Some("--cores") => r.run.cores = value()?.to_str().ok_or("--cores")?.parse()?,
            Some("--work-dir") => r.run.work_dir = value()?.into(),
            Some("--keep-root") => r.keep_root = true,
            Some("--remove-build-dir") => r.remove_build_dir = true,
            Some("--leak-fd") => r.leak_fd = true,
            Some("--timeout-ms") => {
                let ms: u64 = value()?.to_str().ok_or("--timeout-ms")?.parse()?;
                r.timeout = Some(std::time::Duration::from_millis(ms));
            }
            Some("--") => {
                r.run.command = it.collect();
                break;
            }
            _ => return Err(format!("unexpected argument {arg:?}\n{USAGE}").into()),
        }
    }
    Ok(r)
}

/// `NAME=VALUE`, split at the first `=`.
fn env_entry(v: &std::ffi::OsStr) -> AnyResult<(OsString, OsString)> {
    let b = v.as_bytes();
    let i = b
        .iter()
        .position(|&c| c == b'=')
        .ok_or("--env wants NAME=VALUE")?;
    Ok((
        std::ffi::OsStr::from_bytes(&b[..i]).to_owned(),
        std::ffi::OsStr::from_bytes(&b[i + 1..]).to_owned(),
    ))
}

fn run(args: Vec<OsString>) -> AnyResult<ExitCode> {
    let mut a = parse(args)?;
    a.run.store_dir = a.store_dir.ok_or("--store-dir is required")?;
    a.run.build_dir = a.build_dir.ok_or("--build-dir is required")?;
    let prepared = a.run.prepare()?;

    // A descriptor the builder must not see (the battery's EBADF row): not
    // close-on-exec, so only the sandbox's own closing keeps it out.
    let _leaked = if a.leak_fd {
        let f = std::fs::File::open("/dev/zero")?;
        let fd = rustix::io::fcntl_dupfd_cloexec(&f, 7)?;
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())?;
        Some(fd)
    } else {
        None
    };

    let helper = std::env::current_exe()?;
    let sandbox = Sandbox::new(helper, vec!["helper".into()]);
    let stdout = std::io::stdout();
    let result = prepared.run(&sandbox, stdout.as_fd(), a.timeout);
    if !a.keep_root {
        prepared.remove()?;
    } else {
        eprintln!("unrooted-sandbox: kept {}", prepared.parent().display());
    }
    if a.remove_build_dir {
        remove_tree(&a.run.build_dir)?;
    }
    Ok(exit_code(result?))
}
