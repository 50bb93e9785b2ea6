"""What every deploy check shares: the result tally, config values read the way impush reads
them (humantime durations, TOML-ish environment values), and the stop-time budget."""

from __future__ import annotations

import re
import tomllib
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable


class CheckFailed(Exception):
    """A deploy file says something wrong; the message names the file and the key."""


def require(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


@dataclass
class Tally:
    passed: int = 0
    failed: list[str] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], Any]) -> Any:
        """Runs one named check; a failure is recorded and printed, never raised."""
        try:
            result = check()
        except CheckFailed as e:
            self.failed.append(name)
            print(f"FAIL {name}: {e}", flush=True)
            return None
        except Exception:  # a bug in the check itself, or a tool that broke: still a failure
            self.failed.append(name)
            print(f"FAIL {name}: unexpected error\n{traceback.format_exc()}", flush=True)
            return None
        self.passed += 1
        summary = result[-1] if isinstance(result, tuple) and result else result
        print(f"ok   {name}" + (f": {summary}" if isinstance(summary, str) and summary else ""), flush=True)
        return result


_UNITS = {
    "ms": 0.001, "msec": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
}


def seconds(value: str | int | float, what: str) -> float:
    """A duration as impush (humantime) or systemd writes it: `10s`, `1min 30s`, `500ms`; a
    bare number is seconds (systemd's and Kubernetes' convention)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    joined = "".join(n + u for n, u in parts)
    require(bool(parts) and joined == re.sub(r"\s+", "", text), f"{what}: `{value}` is not a duration")
    total = 0.0
    for number, unit in parts:
        require(unit in _UNITS, f"{what}: unknown unit `{unit}` in `{value}`")
        total += float(number) * _UNITS[unit]
    return total


def env_value(raw: str) -> Any:
    """An `IMPUSH_*` value as figment reads it: TOML-ish (arrays, inline tables, numbers,
    booleans), else the plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def effective(config: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The node's settings: `config` (a parsed impush.toml, possibly empty) overlaid by
    `IMPUSH_SECTION__KEY` variables, as the binary does."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for name, raw in env.items():
        if not name.startswith("IMPUSH_") or "__" not in name:
            continue
        section, key = name[len("IMPUSH_"):].lower().split("__", 1)
        merged.setdefault(section, {})[key] = env_value(raw)
    return merged


# The node's own defaults for what the stop budget needs (README "Configuration").
DEFAULT_SHUTDOWN_GRACE = 10.0
# Drain on SIGTERM spreads closes over `drain_period`, 10 s by default (docs/design.md section
# 16); budgeted even before a node implements it, so these files need no change when it lands.
DEFAULT_DRAIN_PERIOD = 10.0
FLUSH_MARGIN = 5.0


def stop_budget(settings: dict[str, Any], where: str) -> float:
    """Seconds a node may take after SIGTERM: its grace, its drain and a margin for the broker
    flush. A supervisor must wait longer than this before SIGKILL."""
    limits = settings.get("limits", {})
    grace = seconds(limits.get("shutdown_grace", DEFAULT_SHUTDOWN_GRACE), f"{where}: limits.shutdown_grace")
    drain = DEFAULT_DRAIN_PERIOD
    for section in settings.values():
        if isinstance(section, dict) and "drain_period" in section:
            drain = seconds(section["drain_period"], f"{where}: drain_period")
    return grace + drain + FLUSH_MARGIN


def node_list(settings: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """cluster.nodes as (id, url) pairs, checked for shape."""
    nodes = settings.get("cluster", {}).get("nodes")
    require(isinstance(nodes, list) and nodes, f"{where}: cluster.nodes is missing or empty")
    out = []
    for n in nodes:
        require(isinstance(n, dict) and set(n) == {"id", "url"}, f"{where}: cluster.nodes entry {n!r} is not {{id, url}}")
        out.append((str(n["id"]), str(n["url"])))
    ids = [i for i, _ in out]
    require(len(set(ids)) == len(ids), f"{where}: cluster.nodes lists an id twice: {ids}")
    return out


def split_url(url: str, where: str) -> tuple[str, str, int]:
    """`ws://host:port` -> (scheme, host, port); the port defaults by scheme."""
    m = re.fullmatch(r"(wss?|redis|rediss)://(?:[^@/]*@)?([^:/]+)(?::(\d+))?(/.*)?", url)
    require(m is not None, f"{where}: `{url}` is not a URL this check understands")
    assert m is not None
    scheme, host, port = m.group(1), m.group(2), m.group(3)
    default = {"ws": 80, "wss": 443, "redis": 6379, "rediss": 6379}[scheme]
    return scheme, host, int(port) if port else default


def url_sections(settings: dict[str, Any]) -> tuple[str, ...]:
    """The sections among broker, presence and offline that set their own `url`."""
    return tuple(s for s in ("broker", "presence", "offline") if isinstance(settings.get(s), dict) and "url" in settings[s])
