//! HTTP/1.1 wire handling, sans-IO: request heads, body framing, chunked decoding, response
//! heads and the `Date` header. Nothing here touches a socket; the server drives these over
//! esocket buffers, and the fuzz target drives them over arbitrary bytes.

mod chunked;
pub mod client;
mod date;
mod request;
mod response;
pub mod server;
mod status;

pub use chunked::{ChunkedDecoder, ChunkedError};
pub use date::{DateCache, http_date};
pub use request::{BodyFraming, HttpLimits, ParseError, Request, RequestHead, parse_request_head};
pub use response::{Headers, Response};
pub use status::reason;
