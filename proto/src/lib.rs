//! The master-worker protocol. This crate owns the `.proto` files, the generated code, every conversion
//! between wire types and `arachne_shared` types, and the tonic server and client glue.
//!
//! Architecture invariant: no prost or tonic type appears in this crate's public API. The master implements
//! [`server::Handler`] and the worker uses [`client::Client`], both in terms of `arachne_shared::cluster`. A
//! worker in the master's own process reaches the handler through a [`client::LocalLink`] instead of the wire.

pub mod client;
mod convert;
pub mod listen;
mod local;
pub mod server;

/// Generated code. Kept private: everything outside this crate speaks `arachne_shared` types.
#[allow(clippy::all, unreachable_pub, missing_docs)]
mod pb {
    tonic::include_proto!("arachne.v1");
}

/// Errors of the protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer sent a message that does not fit the protocol; names the field.
    #[error("invalid message from peer: {0}")]
    Invalid(String),
    /// The master could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed or the stream broke; carries the peer's message.
    #[error("{0}")]
    Rpc(String),
    /// The master refused this worker's token; retrying with the same token cannot help.
    #[error("the master refused this worker's token: {0}")]
    Unauthenticated(String),
    /// Serving failed (for example the listener broke).
    #[error("grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated => Self::Unauthenticated(status.message().to_owned()),
            code => Self::Rpc(format!("{code:?}: {}", status.message())),
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One item of a gRPC stream as a shared type: a broken stream and a message that does not convert are both
/// errors, after which the stream is done with.
fn from_wire<W, T: TryFrom<W, Error = Error>>(item: Result<W, tonic::Status>) -> Result<T> {
    T::try_from(item?)
}

/// Maximum size of one gRPC message either way. A log batch carries lines of up to the runner's line limit.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 flow-control windows of both sides: how much may be in flight per stream and per connection.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 4 << 20;
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
