#!/usr/bin/env python3
"""Replays a nextest run's JUnit report (target/nextest/default/junit.xml, written by
./scripts/test.sh) through nextest's scheduling rule, to try an order of the tests before
spending a CI run on it (.config/nextest.toml says why order matters here).

    scripts/nextest-replay.py target/nextest/default/junit.xml [--smoke-priority 55] [--jitter 20]

The rule is that of nextest's scheduler (the future-queue crate's grouped queue): tests are
taken in priority order while the slots already taken leave room for the next one's
`threads-required`; a test whose group is full waits in that group's queue, which is looked at
again only when a test of the same group ends. Each test keeps the duration the report gives it.
The classes and priorities below mirror .config/nextest.toml's overrides: change them together.
Prints the replayed wall time and how many tests would never start; with --jitter N, also
the range over 20 draws with every duration scaled by a random factor within -N%..+N%.
"""

from __future__ import annotations

import argparse
import heapq
import random
import xml.etree.ElementTree as ET

TEST_THREADS = 8
GROUPS = {"cluster": 6}


def load(path: str) -> list[tuple[str, str, float]]:
    return [(tc.get("classname", ""), tc.get("name", ""), float(tc.get("time", "0")))
            for tc in ET.parse(path).iter("testcase")]


def classify(binary: str, name: str, a: argparse.Namespace) -> tuple[int, int, str | None]:
    """(priority, threads-required, group) of a test, as .config/nextest.toml sets them."""
    if binary.startswith("impush-bench"):
        return a.smoke_priority, 1, None
    cluster = "::cluster_" in binary or binary == "impush-example-nats::two_nodes"
    if "killed_nodes_clients_reconnect_elsewhere_and_come_home" in name:
        return a.failover_priority, 4, "cluster"
    if cluster:
        return 50, 2, "cluster"
    return 0, 1, None


def replay(tests, a) -> tuple[float, int]:
    items = sorted(
        (-p, binary, name, w, g, d)
        for binary, name, d in tests
        if "rolling_restart" not in name  # run alone in a step of their own
        for p, w, g in [classify(binary, name, a)]
    )
    used = 0
    group_used = {g: 0 for g in GROUPS}
    queued: dict[str, list] = {g: [] for g in GROUPS}
    running: list = []
    now = 0.0
    nxt = 0

    def fits(w: int) -> bool:
        return used <= TEST_THREADS - min(w, TEST_THREADS)

    def group_fits(g: str, w: int) -> bool:
        return group_used[g] <= GROUPS[g] - min(w, GROUPS[g])

    def start(item) -> None:
        nonlocal used
        _, _, _, w, g, d = item
        used += min(w, TEST_THREADS)
        if g:
            group_used[g] += min(w, GROUPS[g])
        heapq.heappush(running, (now + d, id(item), item))

    def take() -> None:
        nonlocal nxt
        while nxt < len(items) and fits(items[nxt][3]):
            item = items[nxt]
            nxt += 1
            g = item[4]
            if g and not group_fits(g, item[3]):
                queued[g].append(item)
            else:
                start(item)

    take()
    while running:
        now, _, item = heapq.heappop(running)
        _, _, _, w, g, _ = item
        used -= min(w, TEST_THREADS)
        if g:
            group_used[g] -= min(w, GROUPS[g])
            while queued[g] and fits(queued[g][0][3]) and group_fits(g, queued[g][0][3]):
                start(queued[g].pop(0))
        take()
    never = len(items) - nxt + sum(len(q) for q in queued.values())
    return now, never


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("junit")
    ap.add_argument("--smoke-priority", type=int, default=55)
    ap.add_argument("--failover-priority", type=int, default=60)
    ap.add_argument("--jitter", type=int, default=0, help="percent")
    a = ap.parse_args()
    tests = load(a.junit)
    took, never = replay(tests, a)
    print(f"replayed: {took:.0f} s, {never} tests never started")
    if a.jitter:
        spans = []
        for seed in range(20):
            r = random.Random(seed)
            f = a.jitter / 100
            moved = [(b, n, d * r.uniform(1 - f, 1 + f)) for b, n, d in tests]
            spans.append(replay(moved, a))
        print(f"with durations within -{a.jitter}%..+{a.jitter}% (20 draws): "
              f"{min(s for s, _ in spans):.0f}-{max(s for s, _ in spans):.0f} s, "
              f"at most {max(n for _, n in spans)} tests never started")


if __name__ == "__main__":
    main()
