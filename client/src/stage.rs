//! Stages and statuses: where a client is on its way to streaming, and how that step went.

/// The stages of a client connection, in order (DAP's `dap_client_stage_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Nothing done; nothing held.
    Begin,
    /// The encryption handshake (`POST /enc_init`): a key shared with the node.
    EncInit,
    /// `POST /stream_ctl` over enc_http: a session created for the chosen channels.
    StreamCtl,
    /// The stream's connection is being opened and upgraded.
    StreamSession,
    /// The stream is attached (`101`).
    StreamConnected,
    /// Channels are live: writes flow.
    StreamStreaming,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::Begin,
        Stage::EncInit,
        Stage::StreamCtl,
        Stage::StreamSession,
        Stage::StreamConnected,
        Stage::StreamStreaming,
    ];

    /// The stage after this one (`None` after streaming).
    pub fn next(self) -> Option<Stage> {
        Stage::ALL.get(self as usize + 1).copied()
    }

    /// The stage before this one (`None` before `Begin`).
    pub fn prev(self) -> Option<Stage> {
        (self as usize).checked_sub(1).map(|i| Stage::ALL[i])
    }

    /// A short name for logs and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Begin => "begin",
            Stage::EncInit => "enc_init",
            Stage::StreamCtl => "stream_ctl",
            Stage::StreamSession => "stream_session",
            Stage::StreamConnected => "stream_connected",
            Stage::StreamStreaming => "stream_streaming",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the current stage stands (DAP's `dap_client_stage_status_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Nothing asked of this stage yet.
    None,
    /// Its step is running.
    InProgress,
    /// Its step failed (a retry may follow).
    Error,
    /// Its step finished; the client moves on toward the target.
    Done,
    /// The target stage is reached.
    Complete,
}
