//! DNS on the reactor: a stub resolver and a small authoritative server, both on UDP
//! esockets, with [hickory-proto](https://docs.rs/hickory-proto) for the wire format only.
//!
//! * [`LocalResolver`] lives on one worker and delivers A/AAAA results to callbacks there;
//!   [`Resolver`] is its handle for any thread (a bounded request queue to the worker, and
//!   a blocking [`Resolver::resolve`]). Servers come from [`ResolverConfig`], which can be
//!   read from `/etc/resolv.conf` ([`ResolvConf`]). Queries carry random ids from the system
//!   CSPRNG; answers must match id, server address and question, or they are counted and
//!   dropped. Truncated answers fail with [`ResolveError::Truncated`]: there is no TCP.
//! * [`DnsServer`] answers from a [`Zone`] (A, AAAA, TXT, CNAME; SOA synthesised) that the
//!   application fills and edits while it runs, through a [`SharedZone`]. It listens on
//!   every worker (`SO_REUSEPORT`) or on one.
//!
//! The deciding parts are sans-IO and tested without sockets: the resolver's state machine
//! (`lookups.rs`, time passed in), the server's answers (`answer.rs`), the zone, and
//! resolv.conf parsing. The esocket drivers are thin.
//!
//! # Example
//!
//! A server on 127.0.0.1 (ephemeral port) and a resolver asking it:
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
//! use std::time::Duration;
//! use dap_net::dns::{
//!     DnsServer, LookupKind, ResolveError, Resolver, ResolverConfig, ServerConfig, Zone,
//! };
//! use dap_reactor::Reactor;
//!
//! let reactor = Reactor::builder().threads(1).pin(false).start()?;
//!
//! let mut zone = Zone::new("example.test")?;
//! zone.add_a("www.example.test", Ipv4Addr::new(192, 0, 2, 7), 300)?;
//! zone.add_aaaa("www.example.test", Ipv6Addr::LOCALHOST, 300)?;
//! let server = DnsServer::start(
//!     &reactor,
//!     "127.0.0.1:0".parse()?,
//!     zone.into(),
//!     ServerConfig::default(),
//! )?;
//!
//! let config = ResolverConfig::new(vec![server.local_addr()]).timeout(Duration::from_secs(2));
//! let resolver = Resolver::start(&reactor.workers()[0], config)?;
//! let found = resolver.resolve("www.example.test", LookupKind::Both)?;
//! assert_eq!(
//!     found.addrs,
//!     [IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)), IpAddr::from(Ipv6Addr::LOCALHOST)]
//! );
//!
//! // The zone can change while the server runs.
//! server.zone().write().remove("www.example.test");
//! let gone = resolver.resolve("www.example.test", LookupKind::A);
//! assert!(matches!(gone, Err(ResolveError::NxDomain)));
//!
//! reactor.shutdown(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod answer;
mod config;
mod error;
mod lookups;
mod resolver;
mod server;
mod wire;
mod zone;

pub use config::{ResolvConf, ResolverConfig};
pub use error::{ResolveError, StartError, ZoneError};
pub use lookups::{Lookup, LookupId, LookupKind, ResolverStats};
pub use resolver::{LocalResolver, Resolver};
pub use server::{DnsServer, ServerConfig, ServerStats};
pub use zone::{RecordKind, SharedZone, Zone};

/// The sans-IO cores of the resolver and of the server, for the fuzz targets (`fuzz/`) and
/// their corpus test: not part of the API, and may change without notice.
#[doc(hidden)]
pub mod sans_io {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::lookups::Lookups;
    use super::{Lookup, LookupId, LookupKind, ResolveError, ResolverConfig, ResolverStats, Zone};

    /// The server's answer to one datagram from `zone` (`None`: nothing is sent).
    pub fn respond(zone: &Zone, max_payload: u16, data: &[u8]) -> Option<Vec<u8>> {
        match super::answer::respond(zone, max_payload, data) {
            super::answer::Outcome::Reply { bytes, .. } => Some(bytes),
            super::answer::Outcome::Drop => None,
        }
    }

    /// The resolver's state machine, without sockets.
    #[derive(Debug)]
    pub struct ResolverCore(Lookups);

    impl ResolverCore {
        /// A core for `cfg` (validated by the caller).
        pub fn new(cfg: &ResolverConfig) -> Self {
            ResolverCore(Lookups::new(cfg))
        }

        /// Starts a lookup.
        ///
        /// # Errors
        /// As the resolver's.
        pub fn start(
            &mut self,
            now: Instant,
            name: &str,
            kind: LookupKind,
        ) -> Result<LookupId, ResolveError> {
            self.0.start(now, name, kind)
        }

        /// A datagram arrived from `from`.
        pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
            self.0.handle_datagram(now, from, data);
        }

        /// Deadlines up to `now` passed.
        pub fn handle_timeout(&mut self, now: Instant) {
            self.0.handle_timeout(now);
        }

        /// The next datagram to send: destination and bytes.
        pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
            self.0.poll_transmit().map(|t| (t.to, t.data.to_vec()))
        }

        /// The next finished lookup.
        pub fn poll_event(&mut self) -> Option<(LookupId, Result<Lookup, ResolveError>)> {
            self.0.poll_event()
        }

        /// When [`handle_timeout`](Self::handle_timeout) next has work.
        pub fn poll_timeout(&self) -> Option<Instant> {
            self.0.poll_timeout()
        }

        /// The counters.
        pub fn stats(&self) -> ResolverStats {
            self.0.stats()
        }

        /// Lookups in flight.
        pub fn in_flight(&self) -> usize {
            self.0.in_flight()
        }
    }
}
