//! [`StreamKey`]: a channel's stream or the broadcast stream, the unit of history and resume
//! (`docs/design.md` section 15). Shared by the node (which keeps and numbers streams) and the
//! session (which holds a stream's frames back while its resume is being prepared).

use impush_core::ChannelName;

/// A stream: one channel, or the broadcast stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum StreamKey {
    Channel(ChannelName),
    Broadcast,
}

impl StreamKey {
    /// The key the stream's sequencer is placed by (`Cluster::stream_owner`).
    pub(crate) fn placement(&self) -> &str {
        match self {
            StreamKey::Channel(c) => c.as_str(),
            // Not a valid channel name, so no channel shares the broadcast stream's place.
            StreamKey::Broadcast => " broadcast",
        }
    }
}
