//! The `unrooted` command's integration tests: the format verbs against the Nix 2.8 tools, and the daemon driven by the real Nix clients as unprivileged users.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-cli --test cli <file>::`).

mod authz_untrusted;
mod bounds_connections;
mod bounds_input;
mod build_builtins;
mod build_ca;
mod build_fod_network;
mod build_idrange;
mod build_outputs;
mod build_sandbox;
mod common;
mod crash_consistency;
mod daemon_clients;
mod daemon_protocol;
mod daemon_trust;
mod deploy_doctor;
mod deploy_install;
mod deploy_migrate;
mod drv_cli;
mod drv_live;
mod gc_client;
mod hash_cli;
mod nar_cli;
mod remote_ssh;
mod soak_load;
mod store_leftovers;
mod subst_daemon;
mod subst_s3;
mod trixie_client;
mod trixie_vs_nix_daemon;
