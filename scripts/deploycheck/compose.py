"""deploy/compose.yaml: its services, published ports and node environment, checked against
each other and against the image (deploy/Dockerfile), then turned into node specs to run."""

from __future__ import annotations

import os
import re

import yaml

from .common import CheckFailed, effective, node_list, require, seconds, split_url, stop_budget, url_sections
from .dockerfile import Image
from .nodes import NodeSpec

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: object, where: str) -> object:
    """Compose's `${VAR:-default}` with every variable unset: `docker compose up` on a machine
    with nothing set must work, so each variable needs a default."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        op = m.group(2)
        require(op in (":-", "-"), f"{where}: `{m.group(0)}` has no default, so the one-command start needs it set")
        return m.group(3)

    return _VAR.sub(sub, value)


def environment(service: dict, where: str) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    for k, v in env.items():
        require(v is not None and not isinstance(v, (dict, list)), f"{where}: environment {k} has no plain value")
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def published(service: dict, container_port: int, where: str) -> tuple[str, int]:
    """(host ip, host port) that `container_port` is published on."""
    for p in service.get("ports") or []:
        parts = str(p).split(":")
        require(len(parts) in (2, 3), f"{where}: port `{p}` should be [ip:]host:container")
        if int(parts[-1].split("/")[0]) == container_port:
            return (parts[0] if len(parts) == 3 else "0.0.0.0", int(parts[-2]))
    raise CheckFailed(f"{where}: container port {container_port} is not published")


def check_compose(path: str, image: Image, root: str) -> tuple[list[NodeSpec], list[tuple[str, str]], str, str]:
    with open(path, encoding="utf-8") as f:
        doc = interpolate(yaml.safe_load(f), os.path.basename(path))
    assert isinstance(doc, dict)
    services: dict = doc.get("services") or {}
    base = os.path.dirname(os.path.abspath(path))

    def builds_impush(s: dict) -> bool:
        b = s.get("build")
        if not isinstance(b, dict):
            return False
        ctx = os.path.normpath(os.path.join(base, b.get("context", ".")))
        return os.path.normpath(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))) == os.path.join(root, "deploy", "Dockerfile")

    nodes_svc = {name: s for name, s in services.items() if builds_impush(s)}
    require(len(nodes_svc) == 3, f"{path}: {len(nodes_svc)} services build deploy/Dockerfile from the repository root, wanted 3")
    redis = [name for name, s in services.items() if str(s.get("image", "")).startswith("redis")]
    require(len(redis) == 1, f"{path}: wanted one redis service, found {redis}")
    require("healthcheck" in services[redis[0]], f"{path}: service {redis[0]} has no healthcheck to wait on")

    specs: list[NodeSpec] = []
    lists: dict[str, list[tuple[str, str]]] = {}
    secrets: set[tuple[str, str]] = set()
    for name, svc in nodes_svc.items():
        where = f"{path} service {name}"
        dep = (svc.get("depends_on") or {}).get(redis[0]) if isinstance(svc.get("depends_on"), dict) else None
        require(dep is not None and dep.get("condition") == "service_healthy", f"{where}: must depend on {redis[0]} being healthy")
        env = {**image.env, **environment(svc, where)}
        settings = effective({}, env)
        node_id = settings.get("node", {}).get("id")
        require(isinstance(node_id, str), f"{where}: IMPUSH_NODE__ID is not set")
        nodes = node_list(settings, where)
        lists[name] = nodes
        require(node_id in dict(nodes), f"{where}: node id {node_id} is not in its IMPUSH_CLUSTER__NODES")
        listen_port = int(str(settings["node"]["listen"]).rsplit(":", 1)[1])
        host_ip, host_port = published(svc, listen_port, where)
        scheme, host, port = split_url(dict(nodes)[node_id], where)
        require(
            port == host_port and host in ("127.0.0.1", "localhost", host_ip),
            f"{where}: node {node_id} is advertised as {dict(nodes)[node_id]}, but its port {listen_port} is published on {host_ip}:{host_port}",
        )
        for section in ("broker", "presence", "offline"):
            url = settings.get(section, {}).get("url")
            if url:
                _, rhost, rport = split_url(str(url), f"{where} {section}.url")
                require(rhost == redis[0] and rport == 6379, f"{where}: {section}.url {url} is not the {redis[0]} service")
        require(settings.get("broker", {}).get("kind") == "redis", f"{where}: broker.kind is not redis")
        auth = settings.get("auth", {})
        require(auth.get("secret") and auth.get("api_key"), f"{where}: IMPUSH_AUTH__SECRET and IMPUSH_AUTH__API_KEY must be set")
        secrets.add((str(auth["secret"]), str(auth["api_key"])))
        budget = stop_budget(settings, where)
        grace = seconds(svc.get("stop_grace_period", "10s"), f"{where}: stop_grace_period")
        require(grace > budget, f"{where}: stop_grace_period {grace:g}s is not above the node's shutdown budget {budget:g}s")
        command = svc.get("command") or []
        specs.append(NodeSpec(node_id, command if isinstance(command, list) else command.split(), env, url_sections(settings)))
    first = next(iter(lists.values()))
    require(all(v == first for v in lists.values()), f"{path}: the nodes' IMPUSH_CLUSTER__NODES differ: {lists}")
    require({s.node_id for s in specs} == {i for i, _ in first}, f"{path}: services run {sorted(s.node_id for s in specs)}, the node list has {[i for i, _ in first]}")
    require(len(secrets) == 1, f"{path}: the nodes do not share one auth.secret and api_key")
    api_key = next(iter(secrets))[1]
    return specs, first, api_key, f"{len(specs)} nodes + {redis[0]}; ports, node list, secrets and stop grace agree"
