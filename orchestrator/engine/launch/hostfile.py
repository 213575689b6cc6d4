"""The MPI-style hostfile the deepspeed launcher reads: one ``host slots=N`` line per node.

Checked before anything starts, more strictly than DeepSpeed does: the file must list exactly
the job's nodes, each with the cluster's ranks per node, so that its total equals the world
every phase's layout was resolved against.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class LaunchError(ValueError):
    """A launch that cannot start; the message names the value and the fix."""


HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    """Ranks (GPUs) on this host."""


def parse_hostfile(text: str, *, where: str = "hostfile") -> tuple[Host, ...]:
    """Hosts in file order; comments (#) and blank lines are skipped."""
    hosts: list[Host] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = HOST_LINE.match(line)
        if not match:
            raise LaunchError(f"{where} line {number} {raw.strip()!r} is not 'host slots=N' (e.g. 'worker-0 slots=8')")
        host = Host(name=match.group(1), slots=int(match.group(2)))
        if host.slots < 1:
            raise LaunchError(f"{where} line {number}: {host.name} has slots={host.slots}; give it at least 1")
        if any(h.name == host.name for h in hosts):
            raise LaunchError(f"{where} line {number}: host {host.name} is listed twice; list each node once")
        hosts.append(host)
    if not hosts:
        raise LaunchError(f"{where} lists no hosts: write one 'host slots=N' line per node")
    return tuple(hosts)


def read_hostfile(path: Path | str) -> tuple[Host, ...]:
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"hostfile {path} not found: write one 'host slots=N' line per node "
                          f"(see launch/hostfile.example) and set launch.hostfile")
    return parse_hostfile(path.read_text(), where=f"hostfile {path}")


def check_hosts(hosts: tuple[Host, ...], *, nodes: int, gpus_per_node: int, where: str = "hostfile") -> None:
    """The hostfile must describe exactly ``nodes`` × ``gpus_per_node`` ranks."""
    if len(hosts) != nodes:
        raise LaunchError(f"{where} lists {len(hosts)} host(s) ({', '.join(h.name for h in hosts)}) but "
                          f"cluster.nodes={nodes}: list exactly the nodes of this job, or set cluster.nodes={len(hosts)}")
    wrong = [h for h in hosts if h.slots != gpus_per_node]
    if wrong:
        total = sum(h.slots for h in hosts)
        raise LaunchError(f"{where}: {', '.join(f'{h.name} slots={h.slots}' for h in wrong)} but "
                          f"cluster.gpus_per_node={gpus_per_node} (the hostfile totals {total} ranks, the layouts "
                          f"expect {nodes} × {gpus_per_node} = {nodes * gpus_per_node}): make every slots={gpus_per_node}")


def format_hostfile(hosts: tuple[Host, ...]) -> str:
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)


LOOPBACK_NAMES = ("localhost", "ip6-localhost", "::1", "0.0.0.0")


def is_loopback(host: str) -> bool:
    """An address that names this machine only: localhost, 127.0.0.0/8, ::1 (and 0.0.0.0)."""
    return host.lower() in LOOPBACK_NAMES or host.startswith("127.")


def check_master_addr(master_addr: str, *, nodes: int, hosts: tuple[Host, ...] = ()) -> None:
    """A multi-node job rendezvouses at node 0's address, which every node must reach: a loopback
    ``master_addr`` works only when every "node" is this machine (hosts all loopback)."""
    if nodes <= 1 or not is_loopback(master_addr) or (hosts and all(is_loopback(h.name) for h in hosts)):
        return
    first = hosts[0].name if hosts else "NODE0"
    raise LaunchError(f"launch.master_addr={master_addr} is a loopback address, but cluster.nodes={nodes}: the other "
                      f"nodes cannot reach it and would wait for the rendezvous until the timeout. Set node 0's "
                      f"address (the first host of the hostfile): --set launch.master_addr={first}")
