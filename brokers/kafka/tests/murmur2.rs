//! `cluster.partitioner = "murmur2"` agrees with a Kafka producer that keys records by client
//! id: librdkafka's `murmur2` partitioner (documented as "Java Producer compatible") puts each
//! record in the partition that `Murmur2Partitioner` names as the owning node, for a topic
//! with one partition per node. Runs against rdkafka's in-process mock cluster, so it needs no
//! broker.

#![allow(clippy::unwrap_used)]

use impush_core::{ClientId, Murmur2Partitioner, NodeId, Partitioner};
use rdkafka::{
    mocking::MockCluster,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    ClientConfig,
};

#[tokio::test]
async fn librdkafka_murmur2_partitions_like_the_murmur2_partitioner() {
    const NODES: i32 = 7;
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("owners", NODES, 1).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("partitioner", "murmur2")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let nodes: Vec<NodeId> = (1..=NODES)
        .map(|i| NodeId::new(format!("n{i}")).unwrap())
        .collect();
    for i in 0..300 {
        // Numeric, word-like and multi-byte ids (every tail length of the hash).
        let id = match i % 3 {
            0 => format!("{i}"),
            1 => format!("user-{i}@example"),
            _ => format!("用户{i}"),
        };
        let client = ClientId::new(id.clone()).unwrap();
        let delivered = producer
            .send(
                FutureRecord::to("owners").key(id.as_bytes()).payload("x"),
                Timeout::Never,
            )
            .await
            .unwrap();
        let want = Murmur2Partitioner.node_for(&client, &nodes);
        assert_eq!(
            usize::try_from(delivered.partition).unwrap(),
            want,
            "client {id}"
        );
    }
}
