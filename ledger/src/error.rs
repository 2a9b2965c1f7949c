//! Error types of the ledger. Input problems are per span (a bad line never sinks its batch);
//! store problems concern the whole call.

use thiserror::Error;
use uuid::Uuid;

/// Why one submitted span was refused before anything was written.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("a span must be a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("span is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("caller of tenant `{caller}` may not write into tenant `{target}`")]
    ForeignTenant { caller: String, target: String },
    #[error("owner_id `{given}` is not the caller `{caller}`")]
    ForeignOwner { given: String, caller: String },
    #[error("public key {0} is not a trusted key of this ledger's manifest")]
    UntrustedKey(String),
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    #[error("`signature` and `public_key` must be given together")]
    HalfSigned,
    #[error("text at `{0}` contains a NUL character (U+0000), which the ledger cannot store")]
    NulCharacter(String),
    /// `at` is a JSON pointer (RFC 6901) to the repeated member.
    #[error("duplicate key `{key}` at `{at}`: a key may appear only once per object")]
    DuplicateKey { key: String, at: String },
    /// A number an IEEE double cannot hold as sent (RFC 8785 canonical form): refused rather
    /// than stored altered. `stored` is what it would read back as (`None`: out of range).
    #[error("number {given} at `{at}` cannot be stored exactly ({}); send it as a string",
        match stored { Some(s) => format!("it would read back as {s}"), None => "it is out of range".to_string() })]
    InexactNumber {
        at: String,
        given: String,
        stored: Option<String>,
    },
    /// An indexed field over the limit both stores can index.
    #[error("field `{field}` is {size} bytes, over the {limit}-byte limit for indexed fields")]
    FieldTooLong {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    /// An entity type only the node writes (its records would otherwise be forgeable).
    #[error(
        "entity_type `{entity_type}` is written by the node itself ({writer}); it cannot be submitted"
    )]
    Reserved {
        entity_type: String,
        writer: &'static str,
    },
}

/// Why one well-formed span could not be appended (decided inside the writing transaction).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    #[error("span {id} is at seq {latest}; the next version must be seq {next}, not {given}")]
    SeqConflict {
        id: Uuid,
        latest: i64,
        next: i64,
        given: i64,
    },
    #[error("`seq` was given without `id`: name the span to version")]
    SeqWithoutId,
    #[error("span {0} does not exist, so its first version must be seq 0")]
    NoSuchSpan(Uuid),
    #[error("span {0} belongs to another tenant or is not visible to the caller")]
    NotVisible(Uuid),
    #[error("only the owner may append a new version of private span {0}")]
    NotOwner(Uuid),
}

/// A failure of the store as a whole (connection, migration, corrupt row).
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("span {0} not found or not visible")]
    NotFound(Uuid),
    #[error("only the owner may redact span {0}")]
    NotOwner(Uuid),
    #[error("span {0} is already redacted")]
    AlreadyRedacted(Uuid),
    #[error("{0}")]
    Config(String),
    #[error("rejected: {0}")]
    Input(#[from] InputError),
    #[error("rejected: {0}")]
    Append(#[from] AppendError),
}
