//! Unix sockets at paths too long for `sockaddr_un` (108 bytes with the NUL): Nix
//! binds and connects those through their directory; here through the directory's
//! descriptor (`/proc/self/fd/<n>/<name>`), which is as short whatever the path.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path `sockaddr_un` takes.
const MAX_SUN_PATH: usize = 107;

/// Runs `f` on `path`, or, when it is too long, on an equivalent short path through
/// a descriptor of its directory.
fn short<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() <= MAX_SUN_PATH {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = File::open(dir)?;
    let via: PathBuf = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    if via.as_os_str().len() > MAX_SUN_PATH {
        return f(path);
    }
    f(&via)
}

/// `UnixListener::bind` for a path of any length.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    short(path, |p| UnixListener::bind(p))
}

/// `UnixStream::connect` for a path of any length.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    short(path, |p| UnixStream::connect(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_at_paths_of_108_bytes_or_more_bind_and_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = tmp.path().to_path_buf();
        while dir.as_os_str().len() < 120 {
            dir.push("a-rather-long-directory-name");
        }
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        assert!(path.as_os_str().len() >= 108);
        assert!(
            UnixListener::bind(&path).is_err(),
            "too long for sockaddr_un"
        );
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "bound at the long path itself");
        let _client = connect(&path).unwrap();
        let _ = listener.accept().unwrap();
    }
}
