//! The builtin builders a helper binary provides: the registry it is started with,
//! and calling one (in the sandbox's init, or unsandboxed with `sandbox = false`).

use std::ffi::OsString;
use std::io::Write;

/// A builtin builder, called in the sandbox's init (PID 1, uid 1000 / gid 100 inside,
/// cwd the build directory, every lock of the sandbox in place) with the build's whole
/// environment, exactly what an executed builder would get; it makes `$out` as a
/// builder would. Its error is written to the build log and the build fails with exit
/// code 1.
pub type BuiltinFn = fn(&[(OsString, OsString)]) -> Result<(), Box<dyn std::error::Error>>;

/// A named builtin: `("fetchurl", f)` serves `builtin:fetchurl`.
pub type Builtin = (&'static str, BuiltinFn);

/// Runs the builtin `name` of `builtins` in this process, unsandboxed, with this
/// process's environment and working directory, and exits with its status: what a
/// daemon configured with `sandbox = false` starts in place of a builder. An unknown
/// name exits 127, as an exec of a missing file would.
pub fn builtin_main(builtins: &[Builtin], name: &str) -> ! {
    let Some((_, f)) = builtins.iter().find(|(n, _)| *n == name) else {
        eprintln!("error: unsupported builtin builder 'builtin:{name}'");
        std::process::exit(127)
    };
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    std::process::exit(call_builtin(name, *f, &env))
}

/// Calls a builtin and turns its outcome into an exit code, its error (with every
/// cause) or panic written to stderr, which is the build log.
pub(crate) fn call_builtin(name: &str, f: BuiltinFn, env: &[(OsString, OsString)]) -> i32 {
    let code = match std::panic::catch_unwind(|| f(env)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cause = c.source();
            }
            eprintln!("error: {msg}");
            1
        }
        Err(_) => {
            eprintln!("error: builtin:{name} panicked");
            1
        }
    };
    let _ = std::io::stdout().flush();
    code
}
