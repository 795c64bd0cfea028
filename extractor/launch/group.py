"""The group of processes a run is (this process alone, or one per worker under torchrun
or srun) and the c10d store they share: the list of videos to do, the claim counter, and
the events every supervisor publishes for process 0."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional


@dataclass
class Group:
    store: object  # a torch.distributed Store
    process: int  # this process's index; process 0 coordinates
    processes: int
    ranks: list  # the worker ranks this process supervises
    local_ranks: list  # ... and their GPU index on this node
    world_size: int  # workers in the whole run
    node_workers: int = 1  # workers on this node, which share its CPU cores

    @property
    def coordinator(self) -> bool:
        return self.process == 0


def launcher_environment() -> Optional[dict]:
    """Rank, world size and rendezvous when started by torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by Slurm's srun with more than one task
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR must be set, MASTER_PORT
    defaults to one derived from the job id). None: a plain single-process start."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        node_workers = int(env.get("LOCAL_WORLD_SIZE", "1"))
        source = "torchrun"
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", "0"))
        per_node = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0]
        node_workers = int(per_node) if per_node.isdigit() else 1
        source = "srun"
    else:
        return None
    addr = env.get("MASTER_ADDR")
    port = env.get("MASTER_PORT") or (str(20000 + int(env["SLURM_JOB_ID"]) % 20000) if "SLURM_JOB_ID" in env else None)
    return {"rank": rank, "world_size": world, "local_rank": local, "master_addr": addr, "master_port": port,
            "source": source, "node_workers": max(1, node_workers)}


class GroupError(Exception):
    """The group cannot form or lost its store: one line for the user."""


def join_launcher_group(env: dict, timeout_s: float = 1800.0, say=None, report_every_s: float = 30.0) -> Group:
    """Joins the group: through torchrun's agent store when torchrun serves one, else a
    TCPStore that process 0 hosts (the others connect to it, waiting up to `timeout_s` for
    it to come up). Process 0 then waits for every process to join, saying every
    `report_every_s` which have not (`say`); after `timeout_s` it gives up, tells the
    processes that joined, and raises GroupError naming the missing ones."""
    from torch.distributed import PrefixStore, TCPStore, rendezvous

    rank, world = env["rank"], env["world_size"]
    timeout, say = timedelta(seconds=timeout_s), say or (lambda text: None)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's variables are all set
        store = next(rendezvous("env://", timeout=timeout))[0]
    elif rank == 0:  # not torch's env:// rendezvous: its process 0 waits for the others silently, for half an hour
        store = TCPStore(env["master_addr"], int(env["master_port"]), None, is_master=True, timeout=timeout,
                         wait_for_workers=False, multi_tenant=True, use_libuv=True)
    else:
        store = connect_to_process_0(env["master_addr"], int(env["master_port"]), timeout_s, say, report_every_s)
    # a torchrun restart of the group meets the same agent store: its keys start afresh
    store = PrefixStore(f"feat_extraction/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    store.set(f"joined/{rank}", socket.gethostname())
    store.add("joined", 1)
    if rank == 0:
        wait_for_processes(store, world, timeout_s, say, report_every_s)
    return Group(store, process=rank, processes=world, ranks=[rank], local_ranks=[env["local_rank"]],
                 world_size=world, node_workers=env["node_workers"])


def connect_to_process_0(addr: str, port: int, timeout_s: float, say, report_every_s: float):
    """A client of process 0's store, tried every few seconds until it answers (a wait in
    one long attempt could not be stopped by Ctrl-C or SIGTERM: it runs in C++)."""
    from torch.distributed import TCPStore

    t0 = time.monotonic()
    next_report = t0 + report_every_s
    while True:
        try:  # a plain socket first: torch logs every failed attempt with its C++ stack
            socket.create_connection((addr, port), timeout=2).close()
            return TCPStore(addr, port, None, is_master=False, timeout=timedelta(seconds=timeout_s),
                            wait_for_workers=False, use_libuv=True)
        except OSError as e:
            now = time.monotonic()
            if now - t0 > timeout_s:
                raise GroupError(f"process 0's store at {addr}:{port} did not answer within {timeout_s:.0f}s "
                                 f"({e.strerror or e})") from None
            if now >= next_report:
                say(f"waiting for process 0 at {addr}:{port} ({now - t0:.0f}s; gives up after {timeout_s:.0f}s)")
                next_report = now + report_every_s
            time.sleep(0.5)


def wait_for_processes(store, world: int, timeout_s: float, say, report_every_s: float) -> None:
    t0 = time.monotonic()
    next_report = t0 + report_every_s
    while store.add("joined", 0) < world:
        now = time.monotonic()
        if now - t0 > timeout_s or now >= next_report:
            missing = [p for p in range(world) if not store.check([f"joined/{p}"])]
            names = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            if now - t0 > timeout_s:
                why = f"process(es) {names} of {world} did not join within {timeout_s:.0f}s"
                store.set("todo", json.dumps({"gave_up": why}))
                # the store ends with this process: the ones that joined read why first
                deadline = time.monotonic() + 10.0
                while store.add("told", 0) < world - len(missing) - 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                raise GroupError(f"{why}: check that every task started (the launcher's log)")
            say(f"waiting for process(es) {names} of {world} to join ({now - t0:.0f}s; gives up after {timeout_s:.0f}s)")
            next_report = now + report_every_s
        time.sleep(0.1)


def local_group(world_size: int) -> Group:
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, use_libuv=True,
                     timeout=timedelta(seconds=1800))
    return Group(store, process=0, processes=1, ranks=list(range(world_size)), local_ranks=list(range(world_size)),
                 world_size=world_size, node_workers=world_size)


def publish_todo(group: Group, names: list[str]) -> None:
    group.store.set("todo", json.dumps(names))


def read_todo(group: Group, timeout_s: float = 1800.0) -> list[str]:
    """The videos to do, once process 0 has published them (waited for in short polls that
    Ctrl-C and SIGTERM can stop)."""
    deadline = time.monotonic() + timeout_s
    while not group.store.check(["todo"]):
        if time.monotonic() > deadline:
            raise GroupError(f"process 0 did not publish the videos to do within {timeout_s:.0f}s")
        time.sleep(0.25)
    todo = json.loads(group.store.get("todo"))
    if isinstance(todo, dict):
        group.store.add("told", 1)
        raise GroupError(f"process 0 gave up: {todo['gave_up']}")
    return todo


class EventLog:
    """Events travel from every supervisor to the coordinator as numbered keys in the store."""

    def __init__(self, group: Group):
        self.group, self.store = group, group.store

    def publish(self, rank: int, ev: dict) -> None:
        seq = self.store.add("events", 1)
        self.store.set(f"event/{seq}", json.dumps({**ev, "rank": rank, "process": self.group.process, "t": time.time()}))

    def count(self) -> int:
        return self.store.add("events", 0)

    def take(self, seq: int) -> Optional[dict]:
        """Event `seq`, or None if its publisher has numbered it but not yet written it. Never
        a blocking get: it would hold the store client that the publisher, in this same
        process, needs to write the event."""
        key = f"event/{seq}"
        if not self.store.check([key]):
            return None
        ev = json.loads(self.store.get(key))
        self.store.delete_key(key)
        return ev
