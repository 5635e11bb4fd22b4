//! DNS: a resolver on UDP esockets and a small authoritative server (being built).
