//! The membership side of [`ClusterPresence`]: joins and leaves (to every holder, `relay`),
//! and the queries that ask nodes for memberships. The trait methods in `store` call these.

use std::collections::{BTreeMap, BTreeSet};

use impush_core::{Answer, ChannelInfo, ChannelName, ClientId, Error, Result};
use tokio::time::Instant;

use super::ClusterPresence;
use crate::{
    relay,
    wire::{Query, Reply},
};

impl ClusterPresence {
    pub(super) async fn change(
        &self,
        channel: &ChannelName,
        clients: &[ClientId],
        join: bool,
    ) -> Result<()> {
        if clients.is_empty() {
            return Ok(());
        }
        relay::to_holders(&self.exchange, clients, |clients, at, view| {
            let channel = channel.clone();
            if join {
                Query::Join {
                    channel,
                    clients,
                    at,
                    view,
                }
            } else {
                Query::Leave {
                    channel,
                    clients,
                    at,
                    view,
                }
            }
        })
        .await
    }

    /// Asks both holders of `client` to end its memberships if it is offline; the owner's
    /// answer counts.
    pub(super) async fn end_if_offline(&self, client: &ClientId) -> Result<bool> {
        let (holders, at, view) = {
            let mut m = self.exchange.machine();
            let now = Instant::now();
            m.refresh_live(now);
            (m.holders(client), m.stamp(now), m.view_digest())
        };
        let query = Query::LeaveIfOffline {
            client: client.clone(),
            at,
            view,
        };
        let owner = self
            .exchange
            .send(Some(&holders.owner), query.clone())
            .await?;
        if let Some(backup) = &holders.backup {
            // Told in order after the owner; nobody waits for its answer (its copy of the
            // records is repaired by the owner's hand-over if it missed this).
            if let Err(e) = self.exchange.send(Some(backup), query).await {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "cannot tell a backup holder that a client left its channels"
                );
            }
        }
        let g = owner.gather().await;
        if !g.missing.is_empty() {
            return Err(Error::Unavailable {
                backend: "cluster presence",
                source: Some(format!("node {} did not answer", holders.owner).into()),
            });
        }
        Ok(g.replies
            .iter()
            .any(|(n, r)| *n == holders.owner && matches!(r, Reply::Left { left: true })))
    }

    /// `client`'s channels from its owner, or from its backup when the owner does not answer
    /// (the backup holds a full copy).
    pub(super) async fn channels_of(&self, client: &ClientId) -> Result<Answer<Vec<ChannelName>>> {
        let holders = {
            let mut m = self.exchange.machine();
            m.refresh_live(Instant::now());
            m.holders(client)
        };
        let ask = |node| {
            let query = Query::ClientChannels {
                client: client.clone(),
            };
            let ex = &self.exchange;
            async move {
                let g = ex.ask(Some(node), query).await?;
                let found = g.replies.into_iter().find_map(|(n, r)| match r {
                    Reply::Channels { channels } if n == *node => Some(channels),
                    _ => None,
                });
                Ok::<_, Error>((found, g.missing))
            }
        };
        let (found, missing) = ask(&holders.owner).await?;
        if let Some(value) = found {
            return Ok(Answer { value, missing });
        }
        if let Some(backup) = &holders.backup {
            if let (Some(value), _) = ask(backup).await? {
                return Ok(Answer::complete(value));
            }
        }
        Ok(Answer {
            value: Vec::new(),
            missing,
        })
    }

    /// The members of `channel`: every node answers for the clients it holds, and the
    /// answers are merged (a client's two holders name it once).
    pub(super) async fn members_of(&self, channel: &ChannelName) -> Result<Answer<Vec<ClientId>>> {
        let g = self
            .exchange
            .ask(
                None,
                Query::ChannelMembers {
                    channel: channel.clone(),
                },
            )
            .await?;
        let mut members = BTreeSet::new();
        for (_, reply) in g.replies {
            if let Reply::Clients { clients } = reply {
                members.extend(clients);
            }
        }
        Ok(Answer {
            value: members.into_iter().collect(),
            missing: g.missing,
        })
    }

    /// Every channel with its counts: each node counts the clients it owns, and the counts
    /// are summed.
    pub(super) async fn all_channels(&self) -> Result<Answer<Vec<ChannelInfo>>> {
        let g = self.exchange.ask(None, Query::ChannelCounts).await?;
        let mut merged: BTreeMap<ChannelName, (usize, usize)> = BTreeMap::new();
        for (_, reply) in g.replies {
            if let Reply::Counts { counts } = reply {
                for (name, members, online) in counts {
                    let e = merged.entry(name).or_default();
                    e.0 += members;
                    e.1 += online;
                }
            }
        }
        let value = merged
            .into_iter()
            .map(|(name, (members, online))| ChannelInfo {
                name,
                members,
                online,
            })
            .collect();
        Ok(Answer {
            value,
            missing: g.missing,
        })
    }
}
