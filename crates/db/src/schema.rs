//! Nix 2.8's database schema (version 10) and connection settings, verbatim.
//!
//! The statements are Nix's `schema.sql` byte for byte, comments included: SQLite
//! keeps the text of each `create` statement in `sqlite_master`, and a database we
//! create should be indistinguishable from one `nix-store --init` creates. The
//! `Realisations` tables of the experimental `ca-derivations` feature
//! ([`CA_SCHEMA_SQL`], `ca-specific-schema.sql`, version [`NIX_CA_SCHEMA_VERSION`] in
//! `db/ca-schema`) are created, as Nix 2.8 creates them, only when the store is
//! opened with that feature turned on ([`crate::DbOptions::ca_derivations`]).

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

/// The version of the content-addressed schema Nix 2.8 writes to `db/ca-schema`
/// (`local-store.cc`, `migrateCASchema`).
pub const NIX_CA_SCHEMA_VERSION: u32 = 3;

/// Nix 2.8's `ca-specific-schema.sql`, run when the `ca-derivations` feature first
/// meets a database without it.
pub const CA_SCHEMA_SQL: &str = r#"-- Extension of the sql schema for content-addressed derivations.
-- Won't be loaded unless the experimental feature `ca-derivations`
-- is enabled

create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null, -- symbolic output id, usually "out"
    outputPath integer not null,
    signatures text, -- space-separated list
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);

create index if not exists IndexRealisations on Realisations(drvPath, outputName);

create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);

-- used by QueryRealisationReferences
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
-- used by cascade deletion when ValidPaths is deleted
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
"#;

/// Nix 2.8's upgrade of a version-1 content-addressed schema (`migrateCASchema`):
/// an `id` column for `Realisations` and the `RealisationsRefs` table.
pub const CA_SCHEMA_UPGRADE_2: &str = r#"
                create table Realisations2 (
                    id integer primary key autoincrement not null,
                    drvPath text not null,
                    outputName text not null, -- symbolic output id, usually "out"
                    outputPath integer not null,
                    signatures text, -- space-separated list
                    foreign key (outputPath) references ValidPaths(id) on delete cascade
                );
                insert into Realisations2 (drvPath, outputName, outputPath, signatures)
                    select drvPath, outputName, outputPath, signatures from Realisations;
                drop table Realisations;
                alter table Realisations2 rename to Realisations;

                create index if not exists IndexRealisations on Realisations(drvPath, outputName);

                create table if not exists RealisationsRefs (
                    referrer integer not null,
                    realisationReference integer,
                    foreign key (referrer) references Realisations(id) on delete cascade,
                    foreign key (realisationReference) references Realisations(id) on delete restrict
                );
"#;

/// Nix 2.8's upgrade of a version-2 content-addressed schema: two indexes.
pub const CA_SCHEMA_UPGRADE_3: &str = r#"
                -- used by QueryRealisationReferences
                create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
                -- used by cascade deletion when ValidPaths is deleted
                create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
"#;

/// How long a statement waits for another process's lock before failing: one hour,
/// as Nix sets it, because a long registration by another process is normal and not
/// an error.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// WAL pages between automatic checkpoints (Nix: enough that registering a whole
/// system closure needs a single fsync).
pub const WAL_AUTOCHECKPOINT: u32 = 40000;
