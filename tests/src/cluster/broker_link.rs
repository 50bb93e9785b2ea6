//! A node's broker link behind a [`FaultProxy`], on every backbone: [`Backend::proxied_broker`]
//! builds the proxy and what the cluster's configs need to use it, as the backend's
//! [`BrokerLink`] says.
//!
//! Most clients connect to the address in their URL, so a node is cut by giving it the
//! proxy's address. A Kafka client only bootstraps there and then connects where the broker
//! advertises itself, so there the cases get a private broker that advertises the proxy: every
//! process of the cluster connects through it, and it faults only the connections carrying the
//! cut node's client id (`[broker.properties] "client.id"` in that node's file).

use std::net::SocketAddr;

use super::{
    backend::BrokerLink,
    brokers::PrivateBroker,
    clients::{url_addr, with_addr},
    harness::{Backend, Spec},
};
use crate::{
    proxy::{FaultProxy, Selector},
    support::free_addrs,
};

/// The Kafka client id of the node whose link a [`ProxiedBroker`] cuts.
const CUT_CLIENT_ID: &str = "impush-cut";

/// A broker with one node's link behind [`ProxiedBroker::proxy`].
pub struct ProxiedBroker {
    /// What the cases switch: it acts on the cut node's broker connections only.
    pub proxy: FaultProxy,
    /// The broker URL the cluster starts with.
    pub url: String,
    node: usize,
    /// The cut node's URL, where it differs from [`ProxiedBroker::url`].
    node_url: Option<String>,
    /// TOML appended to the cut node's file.
    node_toml: Option<String>,
    /// A broker of the case's own, stopped when this is dropped.
    _broker: Option<Box<dyn PrivateBroker>>,
}

impl ProxiedBroker {
    /// `spec` with the cut node's link through the proxy.
    pub fn spec(&self, mut spec: Spec) -> Spec {
        if let Some(url) = &self.node_url {
            spec = spec.broker_url(self.node, url.clone());
        }
        if let Some(toml) = &self.node_toml {
            spec = spec.node_toml(self.node, toml.clone());
        }
        spec
    }
}

impl std::fmt::Debug for ProxiedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxiedBroker")
            .field("proxy", &self.proxy.addr())
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A broker whose link from node `node` (index from 0) goes through a fault proxy, the
    /// other nodes' and the helper's not; `None` when the broker is missing (skipped). Start
    /// the cluster with [`ProxiedBroker::url`] and [`ProxiedBroker::spec`].
    pub async fn proxied_broker(&self, node: usize) -> Option<ProxiedBroker> {
        match self.link {
            BrokerLink::Url => {
                let url = self.shared_url()?;
                let broker = url_addr(&url).unwrap_or_else(|| panic!("no host:port in {url}"));
                let proxy = FaultProxy::start(broker).await.expect("a proxy");
                let via = with_addr(&url, proxy.addr());
                Some(ProxiedBroker {
                    proxy,
                    url,
                    node,
                    node_url: Some(via),
                    node_toml: None,
                    _broker: None,
                })
            }
            BrokerLink::KafkaAdvertised(start) => {
                // The broker's port first: the proxy relays to it, and it advertises the proxy.
                let port = free_addrs(1)[0].port();
                let upstream = SocketAddr::from(([127, 0, 0, 1], port));
                let proxy =
                    FaultProxy::start_selecting(upstream, Selector::kafka_client_id(CUT_CLIENT_ID))
                        .await
                        .expect("a proxy");
                let advertise = proxy.addr();
                let broker = tokio::task::block_in_place(|| start(port, advertise))?;
                Some(ProxiedBroker {
                    url: advertise.to_string(),
                    proxy,
                    node,
                    node_url: None,
                    node_toml: Some(format!(
                        "[broker.properties]\n\"client.id\" = \"{CUT_CLIENT_ID}\"\n"
                    )),
                    _broker: Some(broker),
                })
            }
        }
    }
}
