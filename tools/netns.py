"""Separate hosts on one machine: Linux network namespaces joined by veth pairs.

Used by the tests that cut the network between an instance and Redis
(tests/test_netns.py). A ``Network`` is a bridge in the root namespace (the
machine the tests run on) holding the first address of a private /25, chosen at random
in 10.213.0.0/16 so that test processes running side by side do not clash; each
``Host`` is a namespace with one veth on that bridge (its LAN address); ``link`` adds a
point-to-point veth pair of its own between two hosts (a /30 from the upper half of the
/24), which ``Link.cut`` takes down at its far end: the near end keeps its address and
route, so whatever the near host sends there vanishes without an error, as when a cable
is pulled at the other end, and TCP connections carry on once ``Link.heal`` brings it
back. Needs root and ``ip`` (Debian's iproute2). ``Network.close`` removes everything
it created, also after a failed set-up, and ends the processes still running in its
namespaces; the names carry the creating process's pid, so a network whose process was
killed before it could close it is removed by the next one made (``sweep``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Self

BASE = "10.213"
LAN_HOSTS = 126  # .1 (the root namespace) to .126 in the lower /25
FIRST_LINK = 128  # point-to-point /30s from .128 up


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stderr in the error when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None if they can)."""
    if shutil.which("ip") is None:
        return "`ip` (Debian's iproute2, for network namespaces)"
    if os.geteuid() != 0:
        return "root (to create network namespaces)"
    probe = f"nfy-probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"permission to create network namespaces ({exc})"
    ip("netns", "del", probe)
    return None


@dataclass
class Host:
    """A network namespace with one address on the network's bridge."""

    name: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class Link:
    """A veth pair between two hosts: ``near_address`` in one, ``far_address`` in the other."""

    near: Host
    far: Host
    near_address: str
    far_address: str
    far_device: str

    def cut(self) -> None:
        """Take the far end down: what the near host sends is dropped without an error."""
        ip("-n", self.far.name, "link", "set", self.far_device, "down")

    def heal(self) -> None:
        ip("-n", self.far.name, "link", "set", self.far_device, "up")


@dataclass
class Network:
    """A bridge in the root namespace, hosts on it and links between them."""

    tag: str = field(default_factory=lambda: f"{os.getpid():06x}{secrets.token_hex(1)}")
    subnet: str = ""
    hosts: list[Host] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"nfy{self.tag}"  # interface names: 15 characters at most

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (servers there bind it)."""
        return f"{self.subnet}.1"

    def __enter__(self) -> Self:
        sweep()
        try:
            self.subnet = _free_subnet()
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/25", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        """A new namespace ``nfy-<name>-<tag>`` on the bridge."""
        index = len(self.hosts) + 2
        if index > LAN_HOSTS:
            raise RuntimeError("no address left on the network")
        host = Host(f"nfy-{name}-{self.tag}", f"{self.subnet}.{index}")
        ip("netns", "add", host.name)
        self.hosts.append(host)
        outside = f"{self.bridge}h{index}"
        ip("link", "add", outside, "type", "veth", "peer", "name", "lan", "netns", host.name)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("-n", host.name, "addr", "add", f"{host.address}/25", "dev", "lan")
        ip("-n", host.name, "link", "set", "lan", "up")
        ip("-n", host.name, "link", "set", "lo", "up")
        return host

    def link(self, near: Host, far: Host) -> Link:
        """A point-to-point link of its own between ``near`` and ``far``."""
        base = FIRST_LINK + 4 * len(self.links)
        if base + 3 > 255:
            raise RuntimeError("no link subnet left on the network")
        device = f"p{base}"  # one name per link, in both namespaces
        link = Link(near, far, f"{self.subnet}.{base + 1}", f"{self.subnet}.{base + 2}", device)
        pair = ("type", "veth", "peer", "name", device, "netns", far.name)
        ip("link", "add", device, "netns", near.name, *pair)
        self.links.append(link)
        for host, address in ((near, link.near_address), (far, link.far_address)):
            ip("-n", host.name, "addr", "add", f"{address}/30", "dev", device)
            ip("-n", host.name, "link", "set", device, "up")
        return link

    def close(self) -> None:
        """End what still runs in the namespaces, then remove them and the bridge."""
        for host in self.hosts:
            _end_processes(host.name)
        for index, host in enumerate(self.hosts, start=2):
            # The pair by name first: a namespace's devices outlive its name until
            # the kernel frees the namespace, and that can wait.
            _remove("link", f"{self.bridge}h{index}")
            _remove("netns", host.name)
        self.hosts.clear()
        self.links.clear()
        _remove("link", self.bridge)


# What a network names: its namespaces nfy-<host>-<tag>, its bridge nfy<tag> and the
# bridge's veths nfy<tag>h<n>; a tag starts with its owner's pid in 6 hex digits.
OWNED = re.compile(r"nfy(?:-[a-z0-9]+-)?([0-9a-f]{6})[0-9a-f]{2}(?:h[0-9]+)?")


def sweep() -> None:
    """Remove what networks of processes that died before closing them left behind."""
    namespaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    devices = [line.split(": ")[1].split("@")[0] for line in ip("-o", "link", "show").splitlines()]
    for kind, names in (("netns", namespaces), ("link", devices)):
        for name in names:
            owned = OWNED.fullmatch(name)
            if owned and not _alive(int(owned[1], 16)):
                if kind == "netns":
                    _end_processes(name)
                _remove(kind, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _end_processes(namespace: str) -> None:
    with contextlib.suppress(RuntimeError):
        for pid in ip("netns", "pids", namespace).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _remove(kind: str, name: str) -> None:
    with contextlib.suppress(RuntimeError):  # gone already (a veth goes with its peer)
        ip(kind, "del", name)


def _free_subnet() -> str:
    """A ``10.213.N`` no interface or route of this machine uses yet."""
    used = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show")
    candidates = [f"{BASE}.{n}" for n in range(256)]
    random.shuffle(candidates)
    for subnet in candidates:
        if not re.search(rf"\b{re.escape(subnet)}\.", used):
            return subnet
    raise RuntimeError(f"every {BASE}.N/24 is in use")
