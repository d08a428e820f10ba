//! SPDY/3.1 framing as used by Kubernetes streaming (moby/spdystream): frame
//! encoding and decoding, and the zlib-compressed header blocks. No I/O here.

pub mod dict;
pub mod frame;
pub mod headers;

pub use frame::{Frame, FLAG_FIN};
pub use headers::{HeaderCompressor, HeaderDecompressor, Headers};
