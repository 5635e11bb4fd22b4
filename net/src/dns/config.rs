//! Resolver configuration, and `/etc/resolv.conf` parsing.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::time::Duration;

use super::StartError;

/// The DNS port.
const DNS_PORT: u16 = 53;
/// glibc's `MAXNS`: later `nameserver` lines are ignored, as the C library does.
const RESOLV_CONF_MAX_SERVERS: usize = 3;
/// glibc's caps on `timeout:` (`RES_MAXRETRANS`) and `attempts:` (`RES_MAXRETRY`).
const RESOLV_CONF_MAX_TIMEOUT: u64 = 30;
const RESOLV_CONF_MAX_ATTEMPTS: u32 = 5;
/// A resolv.conf is a few hundred bytes; reading stops here so a wrong path (a device, a huge
/// file) cannot make us buffer without bound.
const RESOLV_CONF_MAX_BYTES: u64 = 64 * 1024;

/// What `/etc/resolv.conf` (or text in its format) says about DNS servers.
///
/// Parsing is lenient, as the C library's is: unknown keywords, malformed addresses and bad
/// option values are skipped, never an error. Understood: `nameserver ADDR` (IPv4 or IPv6,
/// IPv6 with a numeric `%scope`; the first three count), and `options` with `timeout:N`,
/// `attempts:N` and `rotate`. `search`, `domain` and `ndots` are not used: names given to the
/// resolver are always absolute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvConf {
    /// The `nameserver` addresses in file order, port 53.
    pub servers: Vec<SocketAddr>,
    /// `options timeout:N`, capped at 30 s as glibc does.
    pub timeout: Option<Duration>,
    /// `options attempts:N`, capped at 5 as glibc does.
    pub attempts: Option<u32>,
    /// `options rotate`: spread queries over the servers instead of always starting with the
    /// first.
    pub rotate: bool,
}

impl ResolvConf {
    /// The usual location.
    pub const PATH: &'static str = "/etc/resolv.conf";

    /// Parses resolv.conf text. Never fails: what cannot be understood is skipped.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            // Comments start with '#' or ';'; cutting there anywhere is safe since neither
            // occurs in an address or an option.
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if conf.servers.len() < RESOLV_CONF_MAX_SERVERS
                        && let Some(addr) = words.next().and_then(parse_server)
                    {
                        conf.servers.push(addr);
                    }
                }
                Some("options") => words.for_each(|opt| conf.apply_option(opt)),
                _ => {}
            }
        }
        conf
    }

    fn apply_option(&mut self, opt: &str) {
        if opt == "rotate" {
            self.rotate = true;
        } else if let Some(v) = opt.strip_prefix("timeout:") {
            if let Ok(secs) = v.parse::<u64>() {
                self.timeout = Some(Duration::from_secs(secs.clamp(1, RESOLV_CONF_MAX_TIMEOUT)));
            }
        } else if let Some(v) = opt.strip_prefix("attempts:")
            && let Ok(n) = v.parse::<u32>()
        {
            self.attempts = Some(n.clamp(1, RESOLV_CONF_MAX_ATTEMPTS));
        }
    }

    /// Reads and parses a file in resolv.conf format (at most 64 KiB of it).
    ///
    /// # Errors
    /// The error opening or reading the file.
    pub fn from_file(path: impl AsRef<Path>) -> io::Result<ResolvConf> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?.take(RESOLV_CONF_MAX_BYTES).read_to_end(&mut bytes)?;
        Ok(ResolvConf::parse(&String::from_utf8_lossy(&bytes)))
    }
}

/// One `nameserver` value: an IP address, IPv6 optionally with a numeric scope id.
fn parse_server(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    // fe80::1%2: std parses the scope only in socket-address syntax. Interface names
    // (fe80::1%eth0) need if_nametoindex, which this crate cannot call without unsafe code.
    let (ip, scope) = word.split_once('%')?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip.parse().ok()?, DNS_PORT, 0, scope.parse().ok()?)))
}

/// How a resolver queries: which servers, how long to wait, how often to try, and its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolverConfig {
    /// The servers, tried in order (or rotating, see `rotate`). At most
    /// [`MAX_SERVERS`](Self::MAX_SERVERS).
    pub servers: Vec<SocketAddr>,
    /// How long to wait for an answer to one try before the next. Default 5 s.
    pub timeout: Duration,
    /// Rounds through the server list: a query is sent at most `attempts × servers` times.
    /// Default 2.
    pub attempts: u32,
    /// Start each query at the next server in turn instead of the first. Default off.
    pub rotate: bool,
    /// Queries on the wire at once (a lookup of both A and AAAA takes two); further lookups
    /// fail with [`ResolveError::TooManyQueries`](super::ResolveError). Default 256, at most
    /// [`MAX_OUTSTANDING`](Self::MAX_OUTSTANDING).
    pub max_outstanding: usize,
    /// Requests waiting in a cross-thread [`Resolver`](super::Resolver)'s queue. Default 1,024.
    pub queue_capacity: usize,
    /// The UDP payload size advertised with EDNS(0), so answers up to that size are not
    /// truncated; `None` sends plain queries (answers over 512 bytes come back truncated).
    /// Default 1,232 (the size that avoids IP fragmentation on common paths).
    pub edns_payload: Option<u16>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
            max_outstanding: 256,
            queue_capacity: 1024,
            edns_payload: Some(1232),
        }
    }
}

impl ResolverConfig {
    /// Most servers a resolver tries.
    pub const MAX_SERVERS: usize = 16;
    /// Largest `max_outstanding`: query ids are 16 bits, and a fuller id space would make a
    /// spoofed answer likelier to hit a live query.
    pub const MAX_OUTSTANDING: usize = 4096;

    /// The defaults, with these servers.
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        ResolverConfig { servers, ..ResolverConfig::default() }
    }

    /// The defaults, overridden by what `conf` sets. With no `nameserver` line the server is
    /// 127.0.0.1:53, as in the C library.
    pub fn from_resolv_conf(conf: &ResolvConf) -> Self {
        let mut cfg = ResolverConfig::new(conf.servers.clone());
        if cfg.servers.is_empty() {
            cfg.servers.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DNS_PORT));
        }
        if let Some(t) = conf.timeout {
            cfg.timeout = t;
        }
        if let Some(a) = conf.attempts {
            cfg.attempts = a;
        }
        cfg.rotate = conf.rotate;
        cfg
    }

    /// The system's configuration, from [`ResolvConf::PATH`].
    ///
    /// # Errors
    /// Reading the file failed.
    pub fn system() -> io::Result<Self> {
        Ok(ResolverConfig::from_resolv_conf(&ResolvConf::from_file(ResolvConf::PATH)?))
    }

    /// Sets the per-try timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the rounds through the server list.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets the cap on queries outstanding.
    pub fn max_outstanding(mut self, n: usize) -> Self {
        self.max_outstanding = n;
        self
    }

    /// Sets the EDNS(0) payload size advertised (`None`: plain queries).
    pub fn edns_payload(mut self, size: Option<u16>) -> Self {
        self.edns_payload = size;
        self
    }

    /// The longest a lookup can take: every try, each waiting the full timeout.
    pub fn max_lookup_time(&self) -> Duration {
        let tries = self.attempts.max(1).saturating_mul(self.servers.len().max(1) as u32);
        self.timeout.saturating_mul(tries)
    }

    /// Checks the values can work.
    ///
    /// # Errors
    /// [`StartError::NoServers`], or [`StartError::BadConfig`] naming the first bad value.
    pub fn validate(&self) -> Result<(), StartError> {
        if self.servers.is_empty() {
            return Err(StartError::NoServers);
        }
        let checks = [
            (self.servers.len() > Self::MAX_SERVERS, "servers: more than MAX_SERVERS"),
            (self.timeout.is_zero(), "timeout must be > 0"),
            (self.attempts == 0, "attempts must be >= 1"),
            (self.max_outstanding == 0, "max_outstanding must be >= 1"),
            (self.max_outstanding > Self::MAX_OUTSTANDING, "max_outstanding over MAX_OUTSTANDING"),
            (self.queue_capacity == 0, "queue_capacity must be >= 1"),
            (self.edns_payload.is_some_and(|p| p < 512), "edns_payload must be >= 512"),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, what)) => Err(StartError::BadConfig(what)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nameservers_in_order_first_three_only() {
        let conf = ResolvConf::parse(
            "nameserver 10.0.0.1\nnameserver 2001:db8::53\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n",
        );
        assert_eq!(
            conf.servers,
            [addr("10.0.0.1:53"), addr("[2001:db8::53]:53"), addr("10.0.0.3:53")]
        );
    }

    #[test]
    fn comments_blank_lines_tabs_and_junk_are_skipped() {
        let text = "# generated\n; also a comment\n\n\tnameserver\t192.0.2.1  # trailing\n\
                    nameserver not-an-ip\nnameserver\nnameserver 192.0.2.2;x\nsearch example.com\n\
                    domain example.com\nsortlist 10.0.0.0/8\nnameserverx 192.0.2.9\n\
                    NAMESERVER 192.0.2.8\n   \n\u{0}\u{ff}garbage line";
        let conf = ResolvConf::parse(text);
        assert_eq!(conf.servers, [addr("192.0.2.1:53"), addr("192.0.2.2:53")]);
        assert_eq!(conf.timeout, None);
        assert_eq!(conf.attempts, None);
        assert!(!conf.rotate);
    }

    #[test]
    fn options_timeout_attempts_rotate_with_caps_and_bad_values() {
        let conf = ResolvConf::parse("options ndots:2 timeout:3 attempts:4 rotate edns0\n");
        assert_eq!(conf.timeout, Some(Duration::from_secs(3)));
        assert_eq!(conf.attempts, Some(4));
        assert!(conf.rotate);
        let capped = ResolvConf::parse("options timeout:999 attempts:99\noptions timeout:0\n");
        // The later line wins, and 0 is raised to 1 as glibc does.
        assert_eq!(capped.timeout, Some(Duration::from_secs(1)));
        assert_eq!(capped.attempts, Some(5));
        let bad = ResolvConf::parse("options timeout:-1 timeout:x attempts: attempts:1e3\n");
        assert_eq!((bad.timeout, bad.attempts), (None, None));
    }

    #[test]
    fn ipv6_scope_ids_numeric_only() {
        let conf = ResolvConf::parse("nameserver fe80::1%2\nnameserver fe80::2%eth0\n");
        assert_eq!(conf.servers.len(), 1);
        match conf.servers[0] {
            SocketAddr::V6(v6) => assert_eq!((v6.scope_id(), v6.port()), (2, 53)),
            SocketAddr::V4(_) => panic!("an IPv6 server"),
        }
    }

    #[test]
    fn empty_file_falls_back_to_localhost_and_options_carry_over() {
        let cfg = ResolverConfig::from_resolv_conf(&ResolvConf::parse(""));
        assert_eq!(cfg.servers, [addr("127.0.0.1:53")]);
        let cfg = ResolverConfig::from_resolv_conf(&ResolvConf::parse(
            "nameserver ::1\noptions timeout:1 attempts:3 rotate",
        ));
        assert_eq!(cfg.servers, [addr("[::1]:53")]);
        assert_eq!((cfg.timeout, cfg.attempts, cfg.rotate), (Duration::from_secs(1), 3, true));
        assert_eq!(cfg.max_lookup_time(), Duration::from_secs(3));
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn from_file_reads_and_missing_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("dap-dns-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, b"nameserver 198.51.100.7\n\xff\xfe\noptions attempts:1\n").unwrap();
        let conf = ResolvConf::from_file(&path).unwrap();
        assert_eq!(conf.servers, [addr("198.51.100.7:53")]);
        assert_eq!(conf.attempts, Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ResolvConf::from_file(dir.join("missing")).is_err());
    }

    #[test]
    fn validate_refuses_unworkable_values() {
        assert!(matches!(ResolverConfig::default().validate(), Err(StartError::NoServers)));
        let ok = ResolverConfig::new(vec![addr("127.0.0.1:53")]);
        assert!(ok.validate().is_ok());
        for bad in [
            ok.clone().timeout(Duration::ZERO),
            ok.clone().attempts(0),
            ok.clone().max_outstanding(0),
            ok.clone().max_outstanding(ResolverConfig::MAX_OUTSTANDING + 1),
            ok.clone().edns_payload(Some(100)),
            ResolverConfig::new(vec![addr("127.0.0.1:53"); ResolverConfig::MAX_SERVERS + 1]),
        ] {
            assert!(matches!(bad.validate(), Err(StartError::BadConfig(_))), "{bad:?}");
        }
    }
}
