//! One error enum per operation: resolving a name, starting a resolver or server, editing a
//! zone.

use std::io;

use dap_reactor::PostError;

/// Why a lookup failed. Callers match on the variant; the `Display` text is for logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No server answered within the timeout, after every try on every server.
    #[error("no DNS server answered in time")]
    Timeout,
    /// The name does not exist (NXDOMAIN).
    #[error("the name does not exist")]
    NxDomain,
    /// The name exists but has no record of the type asked for (NODATA), or a CNAME chain
    /// ended at a name the answer gave no records for.
    #[error("the name has no records of the type asked for")]
    NoRecords,
    /// Every server that answered refused or failed the query; `rcode` is the last response
    /// code seen (2 SERVFAIL, 4 NOTIMP, 5 REFUSED, 1 FORMERR, ...).
    #[error("the DNS server failed the query (rcode {rcode})")]
    ServerFailure {
        /// The DNS response code.
        rcode: u16,
    },
    /// The answer did not fit a UDP datagram (TC set). There is no TCP fallback: ask for fewer
    /// records, or raise [`ResolverConfig::edns_payload`](super::ResolverConfig).
    #[error("the DNS answer was truncated")]
    Truncated,
    /// The resolver already has its configured maximum of queries outstanding, or its request
    /// queue is full.
    #[error("too many DNS queries outstanding")]
    TooManyQueries,
    /// The name is not a valid domain name (empty, a label over 63 bytes, over 255 bytes).
    #[error("invalid domain name")]
    BadName,
    /// The resolver was closed, or its worker stopped, before the lookup finished.
    #[error("the resolver was closed")]
    Closed,
    /// A system call failed (the random source, or a send).
    #[error("DNS I/O error: {0}")]
    Io(#[source] io::Error),
}

/// Why a resolver or a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration lists no DNS server.
    #[error("no DNS server configured")]
    NoServers,
    /// A configuration value is out of range; the text names it.
    #[error("invalid DNS configuration: {0}")]
    BadConfig(&'static str),
    /// Creating or binding a socket failed.
    #[error("DNS socket setup failed: {0}")]
    Io(#[source] io::Error),
    /// The worker could not take the setup work (inbox full, or stopped).
    #[error("the worker did not take the DNS setup: {0}")]
    Worker(#[source] PostError),
    /// The worker did not finish the setup in time (it is stuck or stopping).
    #[error("the worker did not finish the DNS setup in time")]
    NoReply,
}

/// Why a zone edit was refused; the zone is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// The name is not a valid domain name.
    #[error("invalid domain name")]
    BadName,
    /// The name is not the zone's origin nor below it.
    #[error("the name is outside the zone's origin")]
    OutsideOrigin,
    /// A CNAME cannot share its name with other records (RFC 1034 §3.6.2), nor sit at the
    /// origin.
    #[error("a CNAME cannot share its name with other records")]
    CnameConflict,
    /// The zone holds its configured maximum of records.
    #[error("the zone is full ({max} records)")]
    Full {
        /// The configured maximum.
        max: usize,
    },
    /// TXT data longer than [`Zone::MAX_TXT_LEN`](super::Zone::MAX_TXT_LEN) bytes.
    #[error("TXT data too long")]
    TxtTooLong,
}
