//! [`Cluster`]: the static node list plus the partitioner, i.e. "which node owns this client and
//! what URL do its clients use".

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ClientId, Error, NodeId, Partitioner, PartitionerKind, Result};

/// One server node as clients see it (config `cluster.nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node id.
    pub id: NodeId,
    /// The base URL clients are told to connect to, `ws://host:port` or `wss://host:port`.
    pub url: String,
}

/// The cluster's nodes and how clients are spread over them.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<NodeEntry>,
    ids: Vec<NodeId>,
    partitioner: Arc<dyn Partitioner>,
}

impl Cluster {
    /// Builds a cluster from its node list.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty list, a duplicate node id or a URL that is not `ws(s)://`.
    pub fn new(nodes: Vec<NodeEntry>, partitioner: PartitionerKind) -> Result<Self> {
        Self::with_partitioner(nodes, partitioner.build())
    }

    /// Like [`Cluster::new`] with a partitioner of your own.
    ///
    /// # Errors
    /// As [`Cluster::new`].
    pub fn with_partitioner(
        nodes: Vec<NodeEntry>,
        partitioner: Arc<dyn Partitioner>,
    ) -> Result<Self> {
        if nodes.is_empty() {
            return Err(Error::Config(
                "cluster.nodes: at least one node is required".into(),
            ));
        }
        for (i, n) in nodes.iter().enumerate() {
            if nodes[..i].iter().any(|m| m.id == n.id) {
                return Err(Error::Config(format!(
                    "cluster.nodes: node id `{}` is listed twice",
                    n.id
                )));
            }
            let rest = n
                .url
                .strip_prefix("ws://")
                .or_else(|| n.url.strip_prefix("wss://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(Error::Config(format!(
                    "cluster.nodes: url `{}` of node `{}` must look like ws://host:port or wss://host:port",
                    n.url, n.id
                )));
            }
        }
        let ids = nodes.iter().map(|n| n.id.clone()).collect();
        Ok(Self {
            nodes,
            ids,
            partitioner,
        })
    }

    /// The node that owns `client`.
    pub fn owner(&self, client: &ClientId) -> &NodeEntry {
        let i = self.partitioner.node_for(client, &self.ids);
        &self.nodes[i.min(self.nodes.len() - 1)]
    }

    /// All nodes, in configuration order.
    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    /// The node with id `id`.
    pub fn node(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| &n.id == id)
    }
}
