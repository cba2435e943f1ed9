//! The parts of the configuration that name types of the layers below the daemon
//! (the collector's and the builder's settings): the configuration parser itself
//! lives in `unrooted-config`, which depends on none of them, so `deploy` can read a
//! configuration without linking the daemon.

use unrooted_gc::{GcConfig, RootsHelper};

use crate::config::{Config, ConfigError};

/// The collector's and the builder's settings, made from a [`Config`].
pub trait LayerSettings {
    /// Where the collector gets the roots the daemon cannot read.
    fn roots_helper(&self) -> Result<RootsHelper, ConfigError>;
    /// The collector's settings.
    fn gc_config(&self) -> Result<GcConfig, ConfigError>;
    /// The settings that choose which ids builders run as.
    fn id_settings(&self) -> unrooted_builder::IdSettings;
}

impl LayerSettings for Config {
    /// Where the collector gets the roots the daemon cannot read. Collecting without
    /// a helper must be chosen explicitly (`unrooted-gc-without-roots-helper = true`):
    /// `use-roots-daemon = false` alone is refused, so a configuration can never
    /// silently lose the roots in private homes and other users' processes.
    fn roots_helper(&self) -> Result<RootsHelper, ConfigError> {
        let s = &self.settings;
        if s.gc_without_roots_helper {
            if s.use_roots_daemon && self.raw.get("use-roots-daemon") == Some("true") {
                return Err(ConfigError::Value {
                    name: "use-roots-daemon".into(),
                    value: "true".into(),
                    expected: "'false' (or unset) with unrooted-gc-without-roots-helper = true",
                });
            }
            return Ok(RootsHelper::None);
        }
        if !s.use_roots_daemon {
            return Err(ConfigError::Value {
                name: "use-roots-daemon".into(),
                value: "false".into(),
                expected: "'true', unless unrooted-gc-without-roots-helper = true is also set \
                           (collecting without the roots helper must be chosen explicitly)",
            });
        }
        if let Some(p) = s.roots_helper_socket.as_ref().filter(|p| !p.is_absolute()) {
            return Err(ConfigError::Value {
                name: "roots-helper-socket".into(),
                value: p.display().to_string(),
                expected: "an absolute path",
            });
        }
        let socket = s
            .roots_helper_socket
            .clone()
            .unwrap_or_else(|| GcConfig::default_helper_socket(&self.locations.state_dir));
        Ok(if s.roots_helper_runtime_only {
            RootsHelper::RuntimeOnlySocket(socket)
        } else {
            RootsHelper::Socket(socket)
        })
    }

    /// The collector's settings: `keep-outputs`, `keep-derivations` and the helper.
    fn gc_config(&self) -> Result<GcConfig, ConfigError> {
        let mut c = GcConfig::new(self.roots_helper()?);
        c.keep_outputs = self.settings.keep_outputs;
        c.keep_derivations = self.settings.keep_derivations;
        Ok(c)
    }

    /// The settings that choose which ids builders run as.
    fn id_settings(&self) -> unrooted_builder::IdSettings {
        let s = &self.settings;
        unrooted_builder::IdSettings {
            auto_allocate_uids: s.auto_allocate_uids,
            start_id: s.start_id,
            id_count: s.id_count,
            ids_per_build: s.ids_per_build,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Locations, RawSettings, Settings, DEFAULT_IDS_PER_BUILD};

    #[test]
    fn the_default_ids_per_build_is_the_sandboxs_range() {
        assert_eq!(DEFAULT_IDS_PER_BUILD, unrooted_sandbox::UID_RANGE_IDS);
    }

    #[test]
    fn roots_helper_modes() {
        let env = |k: &str| (k == "NIX_STATE_DIR").then(|| "/st".to_owned());
        let config = |text: &str| {
            let mut raw = RawSettings::default();
            raw.apply_text(text, Path::new("t"), Path::new("/"))
                .unwrap();
            Config {
                locations: Locations::from_env(env).unwrap(),
                settings: Settings::from_raw(&raw).unwrap(),
                raw,
            }
        };
        assert_eq!(
            config("").roots_helper().unwrap(),
            RootsHelper::Socket("/st/gc-roots-socket/socket".into())
        );
        assert_eq!(
            config("roots-helper-socket = /run/h/socket\nroots-helper-runtime-only = true\n")
                .roots_helper()
                .unwrap(),
            RootsHelper::RuntimeOnlySocket("/run/h/socket".into())
        );
        assert_eq!(
            config("unrooted-gc-without-roots-helper = true\n")
                .roots_helper()
                .unwrap(),
            RootsHelper::None
        );
        assert!(config("use-roots-daemon = false\n").roots_helper().is_err());
        assert!(config("roots-helper-socket = rel\n")
            .roots_helper()
            .is_err());
        let c = config("keep-outputs = true\nkeep-derivations = false\n")
            .gc_config()
            .unwrap();
        assert!(c.keep_outputs && !c.keep_derivations);
    }
}
