"""deploy/Dockerfile and .dockerignore, read without a Docker engine: the stages, what the
runtime image holds and runs, and whether the binary's shared libraries are in that image."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from .common import require


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


@dataclass
class Image:
    """What the runtime stage makes: the facts the other deploy files must agree with."""

    env: dict[str, str]
    entrypoint: list[str]
    binary: str
    uid: int
    port: int
    healthcheck: list[str]
    apt_packages: list[str]
    # Programs the runtime stage's RUN lines and HEALTHCHECK call: they must be in the image.
    commands: list[str]


def parse(path: str) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and line.lstrip().startswith("#"):
                continue
            if pending and line.lstrip().startswith("#"):
                continue  # comments inside a continued instruction are dropped by Docker too
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            pending += line
            if pending.strip():
                lines.append(pending.strip())
            pending = ""
    require(not pending.strip(), f"{path}: the last instruction ends with a line continuation")
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        else:
            require(bool(stages), f"{path}: `{op}` before the first FROM")
            stages[-1].instructions.append((op, rest))
    return stages


def check_dockerfile(path: str) -> Image:
    stages = parse(path)
    require(len(stages) >= 2, f"{path}: one stage; the image must not carry the toolchain")
    builder, runtime = stages[0], stages[-1]
    builds = [r for r in builder.all("RUN") if "cargo build" in r]
    require(len(builds) == 1, f"{path}: the {builder.name} stage must run one `cargo build`")
    for flag in ("--locked", "--release", "-p impush-server", "--bin impush"):
        require(flag in builds[0], f"{path}: `cargo build` lacks `{flag}`")
    require(runtime.base.endswith("-slim") or "distroless" in runtime.base, f"{path}: runtime base {runtime.base} is not slim")

    copies = runtime.all("COPY") + runtime.all("ADD")
    require(len(copies) == 1, f"{path}: the runtime stage must copy one thing (the binary), found {len(copies)}")
    words = copies[0].split()
    require(words[0] == f"--from={builder.name}", f"{path}: the runtime COPY must be `--from={builder.name}`")
    require(len(words) == 3, f"{path}: the runtime COPY must copy one file: {copies[0]}")
    binary = words[2]

    users = runtime.all("USER")
    require(bool(users), f"{path}: the runtime stage has no USER: it would run as root")
    user = users[-1].split(":")[0]
    require(user.isdigit() and int(user) != 0, f"{path}: USER {users[-1]} must be a numeric, non-root uid (Kubernetes runAsNonRoot checks it)")

    entry = runtime.all("ENTRYPOINT")
    require(len(entry) == 1, f"{path}: the runtime stage needs one ENTRYPOINT")
    entrypoint = json.loads(entry[0])
    require(entrypoint == [binary], f"{path}: ENTRYPOINT {entrypoint} is not the copied binary {binary}")

    env: dict[str, str] = {}
    for e in runtime.all("ENV"):
        for pair in shlex.split(e):
            k, _, v = pair.partition("=")
            env[k] = v
    listen = env.get("IMPUSH_NODE__LISTEN", "")
    require(listen.startswith("0.0.0.0:"), f"{path}: ENV IMPUSH_NODE__LISTEN={listen!r}: a container must listen on 0.0.0.0")
    port = int(listen.rsplit(":", 1)[1])
    require(runtime.all("EXPOSE") == [str(port)], f"{path}: EXPOSE {runtime.all('EXPOSE')} is not the listen port {port}")

    hc = runtime.all("HEALTHCHECK")
    require(len(hc) == 1 and " CMD " in f" {hc[0]} ", f"{path}: the runtime stage needs one HEALTHCHECK ... CMD")
    healthcheck = json.loads(hc[0].split(" CMD ", 1)[1]) if " CMD " in hc[0] else json.loads(hc[0][4:])
    require(any(f"/{port}" in a or f":{port}" in a for a in healthcheck), f"{path}: HEALTHCHECK does not probe port {port}")
    require(runtime.all("STOPSIGNAL") in ([], ["SIGTERM"]), f"{path}: the node shuts down gracefully on SIGTERM only")

    apt = []
    for r in runtime.all("RUN"):
        m = re.search(r"apt-get install ([^&;]*)", r)
        if m:
            apt += [w for w in m.group(1).split() if not w.startswith("-")]
    scripts = runtime.all("RUN") + ([healthcheck[2]] if healthcheck[:2] in (["bash", "-c"], ["sh", "-c"]) else [])
    builtins = {"exec", "printf", "echo", "cd", "set", "test", "[", "true", "false", "export"}
    commands = [healthcheck[0]] + [
        part.split()[0] for script in scripts for part in re.split(r"&&|\|\||;|\|", script) if part.split()
    ]
    commands = [c for c in commands if c not in builtins]
    return Image(env, entrypoint, binary, int(user), port, healthcheck, apt, list(dict.fromkeys(commands)))


def check_dockerignore(path: str, root: str) -> str:
    """The build context is the repository root: target/ must stay out, the sources in."""
    require(os.path.isfile(path), f"{path} is missing: the build would send target/ (gigabytes) as context")
    patterns = [p.strip() for p in open(path, encoding="utf-8") if p.strip() and not p.startswith("#")]

    def ignored(rel: str) -> bool:
        out = False
        for p in patterns:
            neg = p.startswith("!")
            pat = p[1:] if neg else p
            pat = pat.strip("/")
            parts = rel.split("/")
            hit = any(
                fnmatch.fnmatch("/".join(parts[:i]), pat) or fnmatch.fnmatch("/".join(parts[:i]), pat.replace("**/", ""))
                for i in range(1, len(parts) + 1)
            ) or (pat.startswith("**/") and any(fnmatch.fnmatch(x, pat[3:]) for x in parts))
            if hit:
                out = not neg
        return out

    require(ignored("target/debug/impush"), f"{path}: target/ is not excluded")
    needed = ["Cargo.toml", "Cargo.lock", "server/src/main.rs"]
    with open(os.path.join(root, "Cargo.toml"), encoding="utf-8") as f:
        members = re.search(r"^members\s*=\s*\[(.*?)\]", f.read(), re.M | re.S)
    require(members is not None, "Cargo.toml: no workspace members")
    assert members is not None
    needed += [f"{m}/Cargo.toml" for m in re.findall(r'"([^"]+)"', members.group(1))]
    for rel in needed:
        require(not ignored(rel), f"{path}: excludes {rel}, which the build needs")
    return f"{len(patterns)} patterns; target/ out, {len(needed)} workspace files in"


def check_runtime_libs(binary: str, image: Image) -> str:
    """Every shared library the binary loads, and every program the stage runs, comes from a package the slim base has (the
    packages of priority `required` or marked Essential, with their dependencies) or one the
    runtime stage installs (with its dependencies). Debian's own package database answers."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"=>\s*(/\S+)", out) + re.findall(r"^\s*(/\S+)\s+\(", out, re.M)
    require(bool(libs), f"ldd {binary}: no shared libraries found (output: {out.strip()[:200]})")
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Priority} ${Essential}\n"], capture_output=True, text=True, check=True
    ).stdout
    minbase = [w[0] for w in (line.split() for line in listed.splitlines()) if len(w) == 3 and (w[1] == "required" or w[2] == "yes")]
    base = apt_closure(minbase)
    installed = apt_closure(image.apt_packages) - base
    summary = []
    for lib in libs:
        pkg = owner(lib)
        require(pkg is not None, f"{lib} (needed by the binary) belongs to no Debian package")
        assert pkg is not None
        require(
            pkg in base or pkg in installed,
            f"{lib} comes from {pkg}, which is neither in the slim base nor installed by the runtime stage: "
            f"add it to its apt-get install line",
        )
        summary.append(f"{os.path.basename(lib)} ({pkg}, {'base' if pkg in base else 'apt-get install'})")
    for command in image.commands:
        path = shutil.which(command)
        pkg = owner(path) if path else None
        require(
            pkg is not None and (pkg in base or pkg in installed),
            f"the runtime stage runs `{command}`, which is not in the slim base (package {pkg or 'unknown'})",
        )
    return ", ".join(dict.fromkeys(summary)) + f"; commands {' '.join(image.commands)} in the base"


def owner(lib: str) -> str | None:
    # Merged /usr: dpkg may know the file under /lib or /bin rather than /usr/lib or /usr/bin.
    paths = [lib, os.path.realpath(lib)]
    paths += [p[4:] if p.startswith("/usr/") else "/usr" + p for p in paths]
    for candidate in dict.fromkeys(paths):
        r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if r.returncode == 0:
            # `zlib1g:amd64: /lib/...`: the package name, without its architecture.
            return r.stdout.split(": ", 1)[0].split(",")[0].split(":")[0].strip()
    return None


def apt_closure(packages: list[str]) -> set[str]:
    if not packages:
        return set()
    r = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *packages],
        capture_output=True, text=True,
    )
    require(r.returncode == 0, f"apt-cache depends {' '.join(packages)}: {r.stderr.strip()} (run apt-get update)")
    names = {line.strip().split()[-1].strip("<>") for line in r.stdout.splitlines() if line.strip()}
    return {n.split(":")[0] for n in names}
