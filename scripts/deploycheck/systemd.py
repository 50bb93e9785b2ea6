"""deploy/impush.service with deploy/impush.toml and deploy/impush.env.example: systemd's own
verifier and security review, the stop timeout against the node's shutdown, and the command
line, file and environment the unit gives the node, run for real."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import tomllib

from .common import effective, node_list, require, seconds, stop_budget, url_sections
from .nodes import NodeSpec

# The overall exposure `systemd-analyze security` may report (0 = fully confined, 10 = none).
MAX_EXPOSURE = 2.0


def read_unit(path: str) -> dict[str, list[str]]:
    """`Key=value` lines of [Service] (a key may repeat)."""
    service: dict[str, list[str]] = {}
    section = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line:
                k, _, v = line.partition("=")
                service.setdefault(k.strip(), []).append(v.strip())
    return service


def verify(path: str, binary: str) -> str:
    """`systemd-analyze verify`, on a copy whose ExecStart names the binary built here (verify
    wants it to exist). systemd only warns about unknown keys and bad values and still exits
    0, so any diagnostic at all fails the check."""
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, os.path.basename(path))
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"^ExecStart=(\S+)", f"ExecStart={binary}", text, flags=re.M)
        with open(copy, "w", encoding="utf-8") as f:
            f.write(text)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", copy], capture_output=True, text=True)
        diag = (r.stdout + r.stderr).replace(copy, path).strip()
        require(r.returncode == 0 and not diag, f"systemd-analyze verify: {diag or f'exit {r.returncode}'}")
        r = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", copy],  # in tenths
            capture_output=True, text=True,
        )
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
        require(m is not None, f"systemd-analyze security: no exposure level in its output: {r.stderr.strip()}")
        assert m is not None
        require(
            r.returncode == 0 and float(m.group(1)) <= MAX_EXPOSURE,
            f"systemd-analyze security: exposure {m.group(1)} is over {MAX_EXPOSURE}:\n"
            + "\n".join(line for line in r.stdout.splitlines() if line.startswith("✗")),
        )
    return f"verify clean; exposure {m.group(1)} (at most {MAX_EXPOSURE})"


def check_unit(unit: str, config: str, env_file: str) -> tuple[list[NodeSpec], list[tuple[str, str]], str]:
    """The unit's stop timeout, file limit and hardening; the nodes it would run (one per host,
    told apart by node.id), for nodes.run_cluster."""
    svc = read_unit(unit)
    exec_start = shlex.split(svc["ExecStart"][-1])
    require(exec_start[1:3] == ["--config", "/etc/impush/impush.toml"], f"{unit}: ExecStart must pass --config /etc/impush/impush.toml")
    for key, want in [
        ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""), ("KillSignal", "SIGTERM"), ("DynamicUser", "yes"),
    ]:
        require(svc.get(key, [None])[-1] == want, f"{unit}: {key}={want} is missing")
    families = set(svc.get("RestrictAddressFamilies", [""])[-1].split())
    require(families and families <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}, f"{unit}: RestrictAddressFamilies is {families or 'unset'}")

    with open(config, "rb") as f:
        file_cfg = tomllib.load(f)
    env: dict[str, str] = {}
    for e in svc.get("Environment", []):
        for pair in shlex.split(e):
            k, _, v = pair.partition("=")
            env[k] = v
    require(svc.get("EnvironmentFile") is not None, f"{unit}: no EnvironmentFile for the secrets")
    with open(env_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k.strip()] = v.strip().strip('"')
    settings = effective(file_cfg, env)
    where = f"{config} + {os.path.basename(env_file)}"
    nodes = node_list(settings, where)
    require(settings.get("node", {}).get("id") in dict(nodes), f"{where}: node.id is not one of cluster.nodes")
    require(settings.get("auth", {}).get("secret") and settings["auth"].get("api_key"), f"{where}: auth.secret and auth.api_key must be set")

    budget = stop_budget(settings, where)
    stop = seconds(svc["TimeoutStopSec"][-1], f"{unit}: TimeoutStopSec") if "TimeoutStopSec" in svc else 90.0
    require(stop > budget, f"{unit}: TimeoutStopSec={stop:g}s is not above the node's shutdown budget {budget:g}s")
    nofile = int(svc.get("LimitNOFILE", ["1024"])[-1].split(":")[-1])
    max_conn = int(settings.get("limits", {}).get("max_connections", 19000))
    require(max_conn < nofile, f"{unit}: LimitNOFILE={nofile} must be above limits.max_connections ({max_conn})")

    specs = [
        NodeSpec(node_id, [exec_start[1], config], {**env, "IMPUSH_NODE__ID": node_id}, url_sections(settings))
        for node_id, _ in nodes
    ]
    summary = f"TimeoutStopSec {stop:g}s > budget {budget:g}s; LimitNOFILE {nofile} > max_connections {max_conn}"
    return specs, nodes, summary
