//! What can go wrong with memory (mapped once to HTTP in `routes/memory.rs`).

use ledger::StoreError;
use uuid::Uuid;

use ledger::store::memory::EMBED_DIM;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("memory item {0} not found")]
    NotFound(Uuid),
    #[error("promotion request {0} not found")]
    PromotionNotFound(Uuid),
    /// A promotion request that was already decided.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("memory configuration: {0}")]
    Config(String),
    #[error("memory encryption: {0}")]
    Crypto(String),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding server: {0}")]
    Http(String),
    #[error("embedding server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error(
        "embedding server sent {got} vectors of {dim} dimensions; expected {want} of {EMBED_DIM}"
    )]
    Shape { got: usize, dim: usize, want: usize },
}
