#!/usr/bin/env bash
# Runs the standard benchmark set (docs/design.md section 12 targets) and writes the results to
# bench/results/ (JSON + SVG per scenario). Each scenario runs 3 times; summaries are medians.
#
#   bench/run-all.sh            # ~20 minutes on 2 cores, after a release build
#
# Starts its brokers itself (scripts/brokers.sh up) for the Redis, RabbitMQ and Kafka scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p impush-bench
scripts/brokers.sh up >/dev/null
eval "$(scripts/brokers.sh env)"
B=./target/release/impush-bench
OUT=${OUT:-bench/results}
RUNS=${RUNS:-3}
common=(--runs "$RUNS" --out "$OUT")

# 1. idle capacity (and connect storm: connects/s while opening them)
$B "${common[@]}" idle --sockets 19000
#    and the whole machine as a cluster: 51,000 sockets over 3 node processes on Redis (each
#    node and each of the 4 client workers stays under the 20,000 open-files limit)
$B "${common[@]}" --workers 4 --source-ips 8 idle --broker redis --nodes 3 --sockets 51000
# 2. point-to-point on the memory broker: full speed, then latency at 20k msgs/s
$B "${common[@]}" p2p --broker memory --messages 200000
$B "${common[@]}" p2p --broker memory --messages 100000 --rate 20000
# 3. channel fan-out to 10k local members
$B "${common[@]}" fanout --broker memory --members 10000 --messages 50
# 4. the same over Redis with 2 nodes
$B "${common[@]}" p2p --broker redis --nodes 2 --messages 200000 --in-flight 256
$B "${common[@]}" p2p --broker redis --nodes 2 --messages 100000 --rate 20000 --in-flight 256
$B "${common[@]}" fanout --broker redis --nodes 2 --members 10000 --messages 50
#    and with the clients kept off the nodes' core (both nodes on core 0, clients on core 1)
$B "${common[@]}" --pin 0 --pin 1 fanout --broker redis --nodes 2 --members 10000 --messages 50
# 5. the same over RabbitMQ and over Kafka, 2 nodes with cluster presence (no Redis)
for b in rabbitmq kafka; do
  $B "${common[@]}" p2p --broker "$b" --nodes 2 --messages 200000 --in-flight 256
  $B "${common[@]}" p2p --broker "$b" --nodes 2 --messages 100000 --rate 20000 --in-flight 256
  $B "${common[@]}" fanout --broker "$b" --nodes 2 --members 10000 --messages 50
done
# 6. the offline inbox: storing and draining 50,000 messages, per store
for s in memory redis disk; do
  $B "${common[@]}" inbox --store "$s" --messages 50000
done
# 7. everyday rates: one channel, paced; the node on core 0 and the clients on core 1, then
#    sharing both cores
$B "${common[@]}" paced --members 10000 --rate 5 --seconds 20 --pin 0 --pin 1
$B "${common[@]}" paced --members 10000 --rate 5 --seconds 20
$B "${common[@]}" paced --members 1000 --rate 20 --seconds 20 --pin 0 --pin 1
