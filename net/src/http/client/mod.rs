//! The HTTP/1.1 client on the reactor (being built).
