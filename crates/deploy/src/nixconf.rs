//! What `migrate` does to a root `nix-daemon`'s `nix.conf`: settings that mean
//! something else (or nothing) under unrooted are changed, each with a comment saying
//! what it was, and every line that matters to the daemon is listed, changed or kept,
//! so the administrator sees all of it.

/// Settings kept as they are but worth naming in the report: they decide who may use
/// the daemon, what builds see, and where paths come from.
const KEPT_AND_LISTED: &[&str] = &[
    "allowed-users",
    "trusted-users",
    "max-jobs",
    "cores",
    "sandbox-paths",
    "extra-sandbox-paths",
    "substituters",
    "extra-substituters",
    "trusted-substituters",
    "trusted-public-keys",
    "extra-trusted-public-keys",
    "require-sigs",
    "experimental-features",
    "keep-outputs",
    "keep-derivations",
];

/// The comment put before a line `migrate` changed.
const MARK: &str = "# unrooted migrate:";

/// A `nix.conf` adapted to unrooted, and what was changed or kept (one line each).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adapted {
    /// The new text (equal to the old when nothing changed).
    pub text: String,
    /// `changed: …`, `removed: …` and `kept: …` lines, in file order.
    pub report: Vec<String>,
}

/// Adapts `old`: `sandbox = false` or `relaxed` becomes `true` (unrooted's sandbox
/// needs no root, so Debian's reason for turning Nix's off does not hold), and
/// `build-users-group` is commented out (unrooted has no build users).
pub fn adapt(old: &str) -> Adapted {
    let mut out = Adapted::default();
    for line in old.lines() {
        let Some((key, value)) = setting(line) else {
            out.text.push_str(line);
            out.text.push('\n');
            continue;
        };
        let new = match (key, value) {
            ("sandbox", "false" | "relaxed") => {
                out.report.push(format!(
                    "changed: `{}` to `sandbox = true`: builds run in unrooted's rootless sandbox (Nix's needed root; set it back only if builds must see the whole host)",
                    line.trim()
                ));
                Some("sandbox = true".to_owned())
            }
            ("build-users-group", _) => {
                out.report.push(format!(
                    "removed: `{}`: unrooted has no build users (builds get their own id range instead)",
                    line.trim()
                ));
                Some(String::new())
            }
            _ => {
                if KEPT_AND_LISTED.contains(&key) {
                    out.report.push(format!("kept: `{}`", line.trim()));
                }
                None
            }
        };
        match new {
            Some(new) => {
                out.text.push_str(&format!("{MARK} was: {}\n", line.trim()));
                if !new.is_empty() {
                    out.text.push_str(&new);
                    out.text.push('\n');
                }
            }
            None => {
                out.text.push_str(line);
                out.text.push('\n');
            }
        }
    }
    out
}

/// `key = value` of a setting line (comments and blank lines are `None`).
fn setting(line: &str) -> Option<(&str, &str)> {
    let line = line.split('#').next()?.trim();
    let (key, value) = line.split_once('=')?;
    Some((key.trim(), value.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's `nix.conf` says `sandbox = false`; migrated as it was, builds ran
    /// unsandboxed as the store owner and nothing said so.
    #[test]
    fn debians_sandbox_false_is_turned_on_and_every_line_that_matters_is_listed() {
        let debian = "# see https://nixos.org/nix/manual/#sec-conf-file\n\n# So far the sandbox feature does not seem to work on Debian:\nsandbox = false\nbuild-users-group = nixbld\ntrusted-users = root @wheel\nfoo = bar\n";
        let a = adapt(debian);
        assert_eq!(
            a.text,
            "# see https://nixos.org/nix/manual/#sec-conf-file\n\n# So far the sandbox feature does not seem to work on Debian:\n# unrooted migrate: was: sandbox = false\nsandbox = true\n# unrooted migrate: was: build-users-group = nixbld\ntrusted-users = root @wheel\nfoo = bar\n"
        );
        assert_eq!(a.report.len(), 3, "{:?}", a.report);
        assert!(a.report[0].starts_with("changed: `sandbox = false` to `sandbox = true`"));
        assert!(a.report[1].starts_with("removed: `build-users-group = nixbld`"));
        assert_eq!(a.report[2], "kept: `trusted-users = root @wheel`");
        // Adapting again changes nothing more.
        let again = adapt(&a.text);
        assert_eq!(again.text, a.text);
        assert!(again.report.iter().all(|l| l.starts_with("kept:")));
    }
}
