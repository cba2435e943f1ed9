//! Nix 2.8's database schema (version 10) and connection settings, verbatim.
//!
//! The statements are Nix's `schema.sql` byte for byte, comments included: SQLite
//! keeps the text of each `create` statement in `sqlite_master`, and a database we
//! create should be indistinguishable from one `nix-store --init` creates. The
//! `Realisations` tables of the experimental `ca-derivations` feature
//! (`ca-specific-schema.sql`, `db/ca-schema`) are not created: nothing here uses them,
//! and Nix 2.8 adds them itself on first use if that feature is turned on.

/// The schema version Nix 2.8 writes to `db/schema` (as ASCII, without a newline).
pub const NIX_SCHEMA_VERSION: u32 = 10;

/// Nix 2.8's `schema.sql`, run once when a database is created.
pub const SCHEMA_SQL: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// How long a statement waits for another process's lock before failing: one hour,
/// as Nix sets it, because a long registration by another process is normal and not
/// an error.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// WAL pages between automatic checkpoints (Nix: enough that registering a whole
/// system closure needs a single fsync).
pub const WAL_AUTOCHECKPOINT: u32 = 40000;
