//! Helpers shared by the modules of this test binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The `unrooted` binary under test.
pub fn unrooted() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_unrooted"))
}

/// The hostile program (`tests/data/hostile/hostile.c`), compiled statically once per
/// test process into a directory every user can read, so builders can run it as
/// `/hostile`; `None` (the caller skips) when it cannot be compiled outside CI.
pub fn hostile() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile/hostile.c");
            let dir = std::env::temp_dir().join(format!("unrooted-hostile-{}", std::process::id()));
            fs::create_dir_all(&dir).ok()?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).ok()?;
            let exe = dir.join("hostile");
            let ok = std::process::Command::new("gcc")
                .args(["-static", "-O1", "-o"])
                .arg(&exe)
                .arg(&src)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                unrooted_testkit::skip(&format!(
                    "cannot compile {} with gcc -static",
                    src.display()
                ));
                return None;
            }
            Some(exe)
        })
        .clone()
}
