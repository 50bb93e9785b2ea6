"""deploy/k8s/*.yaml: the StatefulSet, its Services, ConfigMap and Secret checked against each
other (stable ids, DNS names, ports, probes, grace period) and against the image, then each
pod's file, arguments and environment turned into node specs to run."""

from __future__ import annotations

import os
import tomllib
from typing import Any

import yaml

from .common import CheckFailed, effective, node_list, require, split_url, stop_budget, url_sections
from .dockerfile import Image
from .nodes import NodeSpec


def load(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs += [(path, d) for d in yaml.safe_load_all(f) if d]
    return docs


def find(docs: list[tuple[str, dict[str, Any]]], kind: str, name: str, ns: str) -> dict[str, Any]:
    for _, d in docs:
        m = d.get("metadata", {})
        if d.get("kind") == kind and m.get("name") == name and m.get("namespace", "default") == ns:
            return d
    raise CheckFailed(f"no {kind} {ns}/{name} in the manifests")


def check_k8s(paths: list[str], image: Image, workdir: str) -> tuple[list[NodeSpec], list[tuple[str, str]], str, str]:
    """`workdir` receives the ConfigMap's file, which the nodes are started with."""
    docs = load(paths)
    sets = [
        d for _, d in docs
        if d.get("kind") == "StatefulSet"
        and any("--config" in (c.get("args") or []) for c in d["spec"]["template"]["spec"]["containers"])
    ]
    require(len(sets) == 1, f"wanted one StatefulSet running impush (args --config), found {len(sets)}")
    sts = sets[0]
    name, ns = sts["metadata"]["name"], sts["metadata"].get("namespace", "default")
    where = f"StatefulSet {ns}/{name}"
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    replicas = int(spec.get("replicas", 1))
    labels = spec["template"]["metadata"].get("labels", {})
    require(spec["selector"]["matchLabels"].items() <= labels.items(), f"{where}: selector does not match the pod labels")

    svc = find(docs, "Service", spec["serviceName"], ns)
    require(svc["spec"].get("clusterIP") == "None", f"{where}: serviceName {spec['serviceName']} is not a headless Service (clusterIP: None)")
    require(svc["spec"]["selector"].items() <= labels.items(), f"Service {spec['serviceName']}: selector does not match the pods")

    (container,) = [c for c in pod["containers"] if "--config" in (c.get("args") or [])]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    require(image.port in ports.values(), f"{where}: containerPort {list(ports.values())} is not the image's port {image.port}")

    def probe(kind: str, path: str) -> None:
        p = container.get(kind, {}).get("httpGet", {})
        port = ports.get(p.get("port"), p.get("port"))
        require(p.get("path") == path and port == image.port, f"{where}: {kind} must GET {path} on port {image.port}, has {p or 'none'}")

    probe("readinessProbe", "/readyz")
    probe("livenessProbe", "/healthz")

    ctx = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    require(ctx.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not set")
    require(ctx.get("runAsUser", image.uid) == image.uid, f"{where}: runAsUser {ctx.get('runAsUser')} is not the image's USER {image.uid}")

    # The config file: the ConfigMap key the --config path lands on.
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    mounts = [m for m in container.get("volumeMounts", []) if config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    require(len(mounts) == 1, f"{where}: --config {config_path} is not under a volume mount")
    volume = next(v for v in pod.get("volumes", []) if v["name"] == mounts[0]["name"])
    require("configMap" in volume, f"{where}: volume {volume['name']} is not a ConfigMap")
    key = mounts[0].get("subPath") or config_path[len(mounts[0]["mountPath"].rstrip("/")) + 1 :]
    cm = find(docs, "ConfigMap", volume["configMap"]["name"], ns)
    require(key in cm.get("data", {}), f"ConfigMap {cm['metadata']['name']}: no key {key} for --config {config_path}")
    text = cm["data"][key]
    file_cfg = tomllib.loads(text)
    local_config = os.path.join(workdir, "impush.toml")
    with open(local_config, "w", encoding="utf-8") as f:
        f.write(text)

    # Each pod's environment, resolved as the kubelet would for pod <name>-<i>.
    secrets_used: dict[str, str] = {}

    def pod_env(pod_name: str) -> dict[str, str]:
        env = dict(image.env)
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
                continue
            src = e.get("valueFrom", {})
            if "fieldRef" in src:
                require(src["fieldRef"]["fieldPath"] == "metadata.name", f"{where}: env {e['name']} uses {src['fieldRef']['fieldPath']}")
                env[e["name"]] = pod_name
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                secret = find(docs, "Secret", ref["name"], ns)
                values = dict(secret.get("stringData", {}))
                require(ref["key"] in values, f"Secret {ref['name']}: no key {ref['key']} (for env {e['name']})")
                env[e["name"]] = str(values[ref["key"]])
                secrets_used[e["name"]] = env[e["name"]]
            else:
                raise CheckFailed(f"{where}: env {e['name']}: only value, fieldRef and secretKeyRef are understood")
        return env

    pods = [f"{name}-{i}" for i in range(replicas)]
    envs = {p: pod_env(p) for p in pods}
    require(envs[pods[0]].get("IMPUSH_NODE__ID") == pods[0], f"{where}: IMPUSH_NODE__ID must come from the pod name (fieldRef metadata.name)")
    settings = effective(file_cfg, envs[pods[0]])
    nodes = node_list(settings, f"ConfigMap {cm['metadata']['name']}")
    require([i for i, _ in nodes] == pods, f"cluster.nodes ids {[i for i, _ in nodes]} are not the pods {pods}: change them with replicas")
    listen_port = int(str(settings["node"]["listen"]).rsplit(":", 1)[1])
    require(listen_port == image.port, f"node.listen port {listen_port} is not the containerPort {image.port}")
    for node_id, url in nodes:
        _, host, port = split_url(url, f"cluster.nodes {node_id}")
        dns = f"{node_id}.{spec['serviceName']}.{ns}.svc.cluster.local"
        require(host in (dns, f"{node_id}.{spec['serviceName']}") and port == image.port, f"cluster.nodes {node_id}: {url} is not ws://{dns}:{image.port}")
    for section in ("broker", "presence", "offline"):
        url = settings.get(section, {}).get("url")
        if url:
            _, host, port = split_url(str(url), f"{section}.url")
            svc_name, _, rest = host.partition(".")
            svc_ns = rest.split(".")[0] if rest else ns
            target = find(docs, "Service", svc_name, svc_ns)
            require(any(p["port"] == port for p in target["spec"]["ports"]), f"{section}.url {url}: Service {svc_name} has no port {port}")
    auth = settings.get("auth", {})
    require(auth.get("secret") and auth.get("api_key"), f"{where}: auth.secret and auth.api_key must be set (the Secret)")
    budget = stop_budget(settings, where)
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    require(grace > budget, f"{where}: terminationGracePeriodSeconds {grace:g} is not above the node's shutdown budget {budget:g}s")

    run_args = [local_config if a == config_path else a for a in args]
    specs = [NodeSpec(p, run_args, envs[p], url_sections(effective(file_cfg, envs[p]))) for p in pods]
    summary = f"{replicas} pods {pods[0]}..{pods[-1]}; headless {spec['serviceName']}, probes, ConfigMap, Secret and grace {grace:g}s agree"
    return specs, nodes, str(auth["api_key"]), summary
