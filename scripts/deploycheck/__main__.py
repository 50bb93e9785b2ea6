"""python -m deploycheck --bin target/debug/impush --redis redis://127.0.0.1:16379

Runs every deploy check, prints `ok`/`FAIL` per check and a closing `N passed, M failed`, and
exits 1 when any failed."""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

from .common import Tally, require
from .compose import check_compose
from .dockerfile import check_dockerfile, check_dockerignore, check_runtime_libs
from .k8s import check_k8s
from .nodes import run_cluster
from .systemd import check_unit, verify


def tool(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    require(r.returncode == 0, f"{' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}:\n{out}")
    return out.splitlines()[-1] if out else ""


def main() -> int:
    ap = argparse.ArgumentParser(prog="deploycheck")
    ap.add_argument("--root", default=os.getcwd(), help="repository root")
    ap.add_argument("--bin", required=True, help="the impush binary to run")
    ap.add_argument("--redis", required=True, help="a Redis the nodes may use (keys under a private prefix)")
    ap.add_argument("--tools", required=True, help="bin dir with check-jsonschema and kubernetes-validate")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    deploy = os.path.join(root, "deploy")
    binary = os.path.abspath(a.bin)
    t = Tally()
    run_id = f"deploy-check-{os.getpid()}"

    image = t.run("Dockerfile: two stages, binary only, non-root, port, healthcheck", lambda: check_dockerfile(os.path.join(deploy, "Dockerfile")))
    t.run(".dockerignore: context without target/", lambda: check_dockerignore(os.path.join(root, ".dockerignore"), root))
    t.run("Cargo.lock is current (the image builds with --locked)", lambda: tool(["cargo", "tree", "--locked", "-q", "-p", "impush-server", "-e", "normal", "--depth", "0"]))
    if image is not None:
        t.run("runtime image has every shared library and program it uses", lambda: check_runtime_libs(binary, image))

    unit = os.path.join(deploy, "impush.service")
    t.run("impush.service: systemd-analyze verify and security", lambda: verify(unit, binary))
    systemd = t.run(
        "impush.service: stop timeout, file limit, hardening, config",
        lambda: check_unit(unit, os.path.join(deploy, "impush.toml"), os.path.join(deploy, "impush.env.example")),
    )
    if systemd is not None:
        specs, nodes, _ = systemd
        key = specs[0].env.get("IMPUSH_AUTH__API_KEY", "")
        t.run("impush.service: the binary runs impush.toml + impush.env on three hosts",
              lambda: run_cluster(binary, specs, nodes, key, a.redis, f"{run_id}-systemd"))

    compose = os.path.join(deploy, "compose.yaml")
    t.run("compose.yaml: compose-spec schema", lambda: tool([os.path.join(a.tools, "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose]))
    if image is not None:
        c = t.run("compose.yaml: 3 nodes + Redis, ports, node list, secrets, stop grace", lambda: check_compose(compose, image, root))
        if c is not None:
            specs, nodes, key, _ = c
            t.run("compose.yaml: the binary runs each node's environment (and the image's HEALTHCHECK)",
                  lambda: run_cluster(binary, specs, nodes, key, a.redis, f"{run_id}-compose", image.healthcheck))

    manifests = sorted(glob.glob(os.path.join(deploy, "k8s", "*.yaml")))
    t.run("k8s: manifests valid (kubernetes-validate --strict)", lambda: tool([os.path.join(a.tools, "kubernetes-validate"), "--strict", "--quiet", *manifests]) or "valid")
    if image is not None:
        with tempfile.TemporaryDirectory(prefix="impush-k8s-") as work:
            k = t.run("k8s: StatefulSet ids, headless Service, probes, ConfigMap, Secret, grace", lambda: check_k8s(manifests, image, work))
            if k is not None:
                specs, nodes, key, _ = k
                t.run("k8s: the binary runs each pod's ConfigMap, Secret and downward-API id",
                      lambda: run_cluster(binary, specs, nodes, key, a.redis, f"{run_id}-k8s"))

    print(f"check-deploy: {t.passed} passed, {len(t.failed)} failed", flush=True)
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
