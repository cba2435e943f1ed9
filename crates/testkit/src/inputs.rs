//! Inputs shared by the tests that drive the Nix client against a daemon: the daemon
//! under test as a process (`crates/cli/tests/cli/daemon_clients.rs`) and in-process
//! (`crates/daemon/tests/ops/clients.rs`), so both run the same workflow on the same
//! files.

use std::fs;
use std::path::Path;

/// Derivations with dependencies and a local source file; builders use only the
/// shell, so the store owner can build them with Nix 2.8 in local mode.
pub const CLIENT_EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep" "echo dep > $out";
  top = mk "top" "echo ${dep} ${./src.txt} > $out";
  note = builtins.toFile "note" "a note";
  other = mk "other" "echo ${note} > $out";
}
"#;

/// Writes into `dir` (a directory every user may read): `src.txt`, `expr.nix`
/// ([`CLIENT_EXPR`]), `hello.txt` and a small `tree` with a subdirectory and a
/// relative symlink; returns the path of `expr.nix`.
pub fn write_client_inputs(dir: &Path) -> String {
    fs::write(dir.join("src.txt"), "source\n").expect("writing src.txt");
    fs::write(dir.join("expr.nix"), CLIENT_EXPR).expect("writing expr.nix");
    fs::write(dir.join("hello.txt"), "hello world\n").expect("writing hello.txt");
    fs::create_dir(dir.join("tree")).expect("mkdir tree");
    fs::write(dir.join("tree/a"), "a\n").expect("writing tree/a");
    fs::create_dir(dir.join("tree/sub")).expect("mkdir tree/sub");
    fs::write(dir.join("tree/sub/b"), "b\n").expect("writing tree/sub/b");
    std::os::unix::fs::symlink("../a", dir.join("tree/sub/link")).expect("symlink");
    dir.join("expr.nix")
        .to_str()
        .expect("a UTF-8 path")
        .to_owned()
}
