"""The fleet file: which hosts a nightly run may use and how to reach them (pure).

::

    name: lab
    scheduler: 192.0.2.1        # the controller's address the workers reach; the scheduler
                                # listens there only ("ADDR" or "ADDR:PORT"; port 0 = any)
    retries: 0                  # re-runs of a cell whose host was lost (default 0: none)
    dashboard: null             # "ADDR:PORT" for Dask's dashboard (default: none)
    prefix: /opt/viommu-harness # where `harness fleet deploy` installs (per host override)
    known_hosts: ~/.ssh/known_hosts  # SSH host keys the controller accepts
    connect_timeout: 30         # seconds for SSH and worker start
    hosts:
      - name: x86-vtd-1
        address: 192.0.2.10
        port: 22                # default 22
        user: ci
        key: ~/.ssh/fleet_ed25519
        labels: [vtd, nightly]  # optional, shown by probe, offered as resources label-NAME
        slots: 1                # cells at once (default 1)
        host_device: "0000:01:00.0"  # optional: the vfio-pci device for tier 3
        scratch: /var/tmp       # optional: the host's TMPDIR for cells

or, for this machine alone (a Dask ``LocalCluster``)::

    name: local
    local: {slots: 1}

Every problem is a ``ConfigError`` of one line naming the key (``hosts[1].address: ...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.qualify.matrix import mapping_field

DEFAULT_PREFIX = "/opt/viommu-harness"
DEFAULT_TIMEOUT = 30.0
TOP_KEYS = ("name", "scheduler", "retries", "dashboard", "prefix", "known_hosts",
            "connect_timeout", "hosts", "local")  # fmt: skip
HOST_KEYS = ("name", "address", "port", "user", "key", "labels", "slots", "prefix",
             "host_device", "scratch", "python")  # fmt: skip
LOCAL_KEYS = ("slots", "labels", "host_device")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BDF = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


@dataclass(frozen=True)
class Host:
    """One host of the fleet (``address`` is None for the local fleet's one host)."""

    name: str
    address: str | None = None
    port: int = 22
    user: str | None = None
    key: str | None = None
    labels: tuple[str, ...] = ()
    slots: int = 1
    prefix: str = DEFAULT_PREFIX
    host_device: str | None = None
    scratch: str | None = None
    python: str | None = None

    @property
    def remote_python(self) -> str:
        """The Python of the deployed harness on this host."""
        return self.python or f"{self.prefix}/bin/python"


@dataclass(frozen=True)
class Fleet:
    """A parsed fleet file."""

    name: str
    hosts: tuple[Host, ...]
    local: bool = False
    scheduler_host: str = "127.0.0.1"
    scheduler_port: int = 0
    retries: int = 0
    dashboard: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = DEFAULT_TIMEOUT
    source: str = ""

    def host(self, name: str) -> Host:
        """The host called ``name``; ConfigError naming the known ones otherwise."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError(f"no host {name!r} in fleet {self.name} ({self.host_names()})")

    def host_names(self) -> str:
        return ", ".join(h.name for h in self.hosts)


def _unknown(entry: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    extra = sorted(set(entry) - set(known))
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: unknown key ({', '.join(known)})")


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}: {value!r} is not an integer in {low}..{high}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value) == "":
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return str(value)


def _labels(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.match(v) for v in value):
        raise ConfigError(f"{where}: expected a list of names (letters, digits, _ . -)")
    return tuple(value)


def _host_device(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = _text(value, where)
    if not _BDF.match(text):
        raise ConfigError(f"{where}: {text!r} is not a PCI address (DDDD:BB:DD.F)")
    return text


def _address(text: str, where: str) -> tuple[str, int]:
    """``ADDR`` or ``ADDR:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, port = text, 0
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{where}: {text!r} is not ADDR or ADDR:PORT")
            port = _port(rest[1:], where)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(rest, where)
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"{where}: {text!r} is not ADDR or ADDR:PORT")
    return host, port


def _port(text: str, where: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"{where}: port {text!r} is not 0..65535")
    return int(text)


def _remote_host(raw: Any, i: int, prefix: str, names: set[str]) -> Host:
    where = f"hosts[{i}]"
    entry = mapping_field(raw, where)
    _unknown(entry, HOST_KEYS, where)
    for key in ("name", "address"):
        if entry.get(key) in (None, ""):
            raise ConfigError(f"{where}.{key}: missing")
    name = _text(entry["name"], f"{where}.name")
    if not _NAME.match(name):
        raise ConfigError(f"{where}.name: {name!r} is not a name (letters, digits, _ . -)")
    if name in names:
        raise ConfigError(f"{where}.name: {name!r} is used by another host")
    names.add(name)
    address = _text(entry["address"], f"{where}.address")
    if any(c.isspace() for c in address) or address.startswith("-"):
        raise ConfigError(f"{where}.address: {address!r} is not a host name or address")
    return Host(
        name=name,
        address=address,
        port=_int(entry.get("port", 22), f"{where}.port", 1, 65535),
        user=_text(entry["user"], f"{where}.user") if entry.get("user") is not None else None,
        key=str(Path(_text(entry["key"], f"{where}.key")).expanduser())
        if entry.get("key") is not None
        else None,
        labels=_labels(entry.get("labels"), f"{where}.labels"),
        slots=_int(entry.get("slots", 1), f"{where}.slots", 1, 64),
        prefix=_abs(entry.get("prefix", prefix), f"{where}.prefix"),
        host_device=_host_device(entry.get("host_device"), f"{where}.host_device"),
        scratch=_abs(entry["scratch"], f"{where}.scratch") if entry.get("scratch") else None,
        python=_abs(entry["python"], f"{where}.python") if entry.get("python") else None,
    )


def _abs(value: Any, where: str) -> str:
    text = _text(value, where)
    if not text.startswith("/"):
        raise ConfigError(f"{where}: {text!r} is not an absolute path")
    return text


def parse_fleet(data: Any, source: str = "fleet") -> Fleet:
    """A decoded fleet file -> ``Fleet``; ConfigError (one line, naming the key) if wrong."""
    top = mapping_field(data, "fleet")
    _unknown(top, TOP_KEYS, "fleet")
    name = _text(top.get("name", "fleet"), "name")
    retries = _int(top.get("retries", 0), "retries", 0, 10)
    timeout = top.get("connect_timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(f"connect_timeout: {timeout!r} is not a positive number of seconds")
    dashboard = top.get("dashboard")
    if dashboard is not None:
        dashboard = _text(dashboard, "dashboard")
        _address(dashboard, "dashboard")
    sched_host, sched_port = _address(_text(top.get("scheduler", "127.0.0.1"), "scheduler"),
                                      "scheduler")  # fmt: skip
    known_hosts = top.get("known_hosts")
    if known_hosts is not None:
        known_hosts = str(Path(_text(known_hosts, "known_hosts")).expanduser())
    common = {
        "name": name, "retries": retries, "dashboard": dashboard, "known_hosts": known_hosts,
        "connect_timeout": float(timeout), "scheduler_host": sched_host,
        "scheduler_port": sched_port, "source": source,
    }  # fmt: skip
    if "local" in top:
        if "hosts" in top:
            raise ConfigError("local: a fleet is either local or has hosts, not both")
        local = top["local"]
        if local is False:
            raise ConfigError("local: false is not a fleet (give hosts instead)")
        entry = {} if local is True else mapping_field(local, "local")
        _unknown(entry, LOCAL_KEYS, "local")
        host = Host(
            name="local",
            slots=_int(entry.get("slots", 1), "local.slots", 1, 64),
            labels=_labels(entry.get("labels"), "local.labels"),
            host_device=_host_device(entry.get("host_device"), "local.host_device"),
        )
        if sched_host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"scheduler: {sched_host!r}: a local fleet listens on loopback")
        return Fleet(hosts=(host,), local=True, **common)  # type: ignore[arg-type]
    raw_hosts = top.get("hosts")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise ConfigError("hosts: expected a non-empty list of hosts (or local: {...})")
    prefix = _abs(top.get("prefix", DEFAULT_PREFIX), "prefix")
    names: set[str] = set()
    hosts = tuple(_remote_host(raw, i, prefix, names) for i, raw in enumerate(raw_hosts))
    if "scheduler" not in top:
        raise ConfigError("scheduler: missing (the controller address every host reaches)")
    return Fleet(hosts=hosts, **common)  # type: ignore[arg-type]


def load_fleet(path: Path) -> Fleet:
    """Read and parse a fleet file; ConfigError ``PATH: key: problem`` if it is wrong."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such fleet file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return parse_fleet(data, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
