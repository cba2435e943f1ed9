//! One client's session: who is connected, what was negotiated and what the client
//! set, with the state all connections share.

use unrooted_format::StorePath;
use unrooted_protocol::request::ClientSettings;
use unrooted_protocol::WireContext;

use crate::state::DaemonState;
use crate::trust::Peer;

/// The state of one session.
pub(crate) struct Session<'a> {
    /// What all connections share.
    pub state: &'a DaemonState,
    /// Who is connected.
    pub peer: Peer,
    /// Whether the peer is in `trusted-users`.
    pub trusted: bool,
    /// The negotiated protocol version and store directory.
    pub cx: WireContext,
    /// The client's settings from SetOptions, already filtered by trust.
    pub settings: ClientSettings,
    /// This connection's id in [`DaemonState::temp_roots`].
    pub id: u64,
}

impl Session<'_> {
    /// Keeps `path` alive until the connection closes. Waits while a collection is
    /// deleting it, so a caller that then finds it valid can rely on it.
    pub fn add_temp_root(&self, path: &StorePath) {
        self.state.temp_roots.add(self.id, path.clone());
    }
}
