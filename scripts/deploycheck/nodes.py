"""Running the real `impush` binary with a deploy file's settings, on loopback: start a set of
nodes, ask one for connect URLs, open a WebSocket on the node each URL names, stop them all.

Only three things differ from what the deploy file gives a node: the listen address (a free
loopback port), the Redis URL (the test Redis) and the key prefix (private to this run). The
node list, ids, secrets and every other setting are the file's own."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .common import CheckFailed, require

STEP = 20.0  # seconds for one thing to happen on loopback


@dataclass
class NodeSpec:
    """One node as a deploy file starts it: its id, arguments after the binary, environment."""

    node_id: str
    args: list[str]
    env: dict[str, str]
    # Sections whose `url` the file or environment sets: pointed at the test Redis. The others
    # (presence, offline) default to the broker's.
    url_sections: tuple[str, ...] = ("broker",)


class Node:
    def __init__(self, binary: str, spec: NodeSpec, redis_url: str, prefix: str, workdir: str):
        self.spec = spec
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
        env.update(spec.env)
        env["IMPUSH_NODE__LISTEN"] = "127.0.0.1:0"
        env["IMPUSH_BROKER__PREFIX"] = prefix
        for section in {"broker", *spec.url_sections}:
            env[f"IMPUSH_{section.upper()}__URL"] = redis_url
        self.out_path = os.path.join(workdir, f"{spec.node_id}.out")
        self.err_path = os.path.join(workdir, f"{spec.node_id}.err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([binary, *spec.args], env=env, stdout=out, stderr=err, cwd=workdir)
        self.addr = ""
        self.terminated = False

    def stderr_tail(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-5:]).strip()

    def wait_listening(self) -> None:
        deadline = time.monotonic() + STEP
        while time.monotonic() < deadline:
            with open(self.out_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("impush listening on "):
                        self.addr = line.split()[3]
                        return
            if self.proc.poll() is not None:
                raise CheckFailed(
                    f"node {self.spec.node_id} refused its configuration (exit {self.proc.returncode}): {self.stderr_tail()}"
                )
            time.sleep(0.05)
        raise CheckFailed(f"node {self.spec.node_id} did not start within {STEP:.0f}s")

    def terminate(self) -> None:
        """Sends SIGTERM once, if the node still runs; `stop` waits for the exit."""
        if not self.terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> int | None:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=STEP)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def request(addr: str, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, str]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=STEP)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_status(addr: str, path: str, want: int) -> None:
    deadline = time.monotonic() + STEP
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = request(addr, "GET", path)[0]
        except OSError as e:
            last = e
        if last == want:
            return
        time.sleep(0.1)
    raise CheckFailed(f"GET {path} on {addr}: {last}, wanted {want}")


def ws_ping(addr: str, path: str) -> None:
    """Opens a WebSocket at `path` (a connect URL's path and token), sends a ping frame and
    waits for the pong: the token was signed with a secret this node shares."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=STEP) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            require(bool(chunk), f"WebSocket upgrade on {addr}: connection closed")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode()
        require(" 101 " in status + " ", f"WebSocket upgrade on {addr}: {status}")
        rest = head.split(b"\r\n\r\n", 1)[1]
        payload = b'{"type":"ping"}'
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        deadline = time.monotonic() + STEP
        while time.monotonic() < deadline:
            # Frames from the server are unmasked; a pong is short (7-bit length).
            while len(rest) >= 2 and len(rest) >= 2 + (rest[1] & 0x7F):
                length = rest[1] & 0x7F
                frame, rest = rest[2 : 2 + length], rest[2 + length :]
                if b'"pong"' in frame:
                    s.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe8")))
                    return
            chunk = s.recv(4096)
            require(bool(chunk), f"WebSocket on {addr}: closed before the pong")
            rest += chunk
        raise CheckFailed(f"WebSocket on {addr}: no pong within {STEP:.0f}s")


def redis_cleanup(redis_url: str, prefix: str) -> None:
    """Deletes the keys a run left under `prefix` (best effort: plain RESP, no password)."""
    rest = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=5) as s:
            f = s.makefile("rb")

            def call(*args: str) -> Any:
                s.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args))
                return read(f)

            cursor = "0"
            while True:
                cursor, keys = call("SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", "1000")
                if keys:
                    call("DEL", *keys)
                if cursor == "0":
                    return
    except (OSError, ValueError):
        return


def read(f: Any) -> Any:
    line = f.readline().rstrip(b"\r\n")
    kind, body = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return body.decode()
    if kind == b":":
        return int(body)
    if kind == b"$":
        n = int(body)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"*":
        n = int(body)
        return None if n < 0 else [read(f) for _ in range(n)]
    raise ValueError(f"unexpected RESP reply {line!r}")


def run_cluster(
    binary: str,
    specs: list[NodeSpec],
    nodes: list[tuple[str, str]],
    api_key: str,
    redis_url: str,
    prefix: str,
    healthcheck: list[str] | None = None,
) -> str:
    """Starts every node of `specs` at once, checks each is live and ready, asks the first for
    connect URLs until every listed node was named, and opens a WebSocket on the node each URL
    names. `healthcheck` (the image's HEALTHCHECK, its port replaced by the first node's) must
    pass against a live node and fail against a closed port. Returns a one-line summary."""
    urls = dict(nodes)
    with tempfile.TemporaryDirectory(prefix="impush-deploy-check-") as workdir:
        running: list[Node] = []
        try:
            for spec in specs:
                running.append(Node(binary, spec, redis_url, prefix, workdir))
            for node in running:
                node.wait_listening()
            by_id = {n.spec.node_id: n for n in running}
            for node in running:
                wait_status(node.addr, "/healthz", 200)
                wait_status(node.addr, "/readyz", 200)
            first = running[0]
            named: dict[str, str] = {}
            for i in range(200):
                status, body = request(first.addr, "POST", "/api/v1/connect", {"client_id": f"deploy-check-{i}"}, api_key)
                require(status == 200, f"POST /api/v1/connect on {first.spec.node_id}: {status} {body}")
                answer = json.loads(body)
                owner, url = answer["node"], answer["url"]
                require(owner in urls, f"connect named node `{owner}`, which the node list does not have")
                require(
                    url.startswith(urls[owner] + "/ws?token="),
                    f"connect URL for node `{owner}` is {url.split('?')[0]}, the node list says {urls[owner]}",
                )
                named.setdefault(owner, url)
                if len(named) == len(by_id):
                    break
            require(set(named) == set(by_id), f"200 clients were placed on {sorted(named)} only, of {sorted(by_id)}")
            for owner, url in named.items():
                ws_ping(by_id[owner].addr, "/ws?" + url.split("?", 1)[1])
            if healthcheck is not None:
                port = first.addr.rsplit(":", 1)[1]
                live = subprocess.run([a.replace("6001", port) for a in healthcheck], capture_output=True, timeout=STEP)
                require(live.returncode == 0, f"HEALTHCHECK exited {live.returncode} against a live node {live.stderr.decode().strip()}")
            # SIGTERM to every node at once, as a deployment stops them: each drains (waits a third
            # of a lease for the others to see it go) side by side, not one after another.
            for node in running:
                node.terminate()
            for node in running:
                code = node.stop()
                require(code == 0, f"node {node.spec.node_id} exited {code} after SIGTERM: {node.stderr_tail()}")
            if healthcheck is not None:
                dead = subprocess.run([a.replace("6001", port) for a in healthcheck], capture_output=True, timeout=STEP)
                require(dead.returncode != 0, "HEALTHCHECK passed against a stopped node")
        finally:
            for node in running:
                node.stop()
            redis_cleanup(redis_url, prefix)
    return f"{len(running)} nodes ready; connect URLs from {running[0].spec.node_id} opened a WebSocket on each of {sorted(named)}"
