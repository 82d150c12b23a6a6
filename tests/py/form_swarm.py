#!/usr/bin/env python3
"""Form a swarm with the Python docker SDK and check it, as an operator's
script would.

usage: form_swarm.py SOCK ADDR [SOCK ADDR]...

The first SOCK/ADDR pair is the manager (swarm init there), the others join
as workers. Waits up to $SWARMNET_TEST_PATIENCE_SECS (default 30) for every
node to be ready. Exits non-zero on any failed check.
"""

import os
import sys
import time

import docker
from docker.errors import APIError


def fail(msg):
    print(f"form_swarm.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main():
    args = sys.argv[1:]
    if len(args) < 2 or len(args) % 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    pairs = list(zip(args[0::2], args[1::2]))
    patience = float(os.environ.get("SWARMNET_TEST_PATIENCE_SECS", "30"))
    clients = [docker.DockerClient(base_url=f"unix://{sock}", timeout=120) for sock, _ in pairs]
    manager, manager_addr = clients[0], pairs[0][1]

    swarm = manager.swarm
    node_id = swarm.init(advertise_addr=manager_addr, listen_addr="0.0.0.0:2377")
    check(isinstance(node_id, str) and node_id, f"swarm.init returned {node_id!r}")
    tokens = swarm.attrs.get("JoinTokens") or {}
    worker_token = tokens.get("Worker", "")
    check(worker_token.startswith("SWMTKN-1-"), f"JoinTokens: {tokens!r}")
    check(tokens.get("Manager") not in (None, "", worker_token), f"JoinTokens: {tokens!r}")

    for client, (_, addr) in zip(clients[1:], pairs[1:]):
        ok = client.swarm.join(
            remote_addrs=[f"{manager_addr}:2377"],
            join_token=worker_token,
            listen_addr="0.0.0.0:2377",
            advertise_addr=addr,
        )
        check(ok is True, f"join on {addr} returned {ok!r}")

    want = len(pairs)
    deadline = time.monotonic() + patience
    while True:
        nodes = manager.nodes.list()
        states = {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["State"] for n in nodes}
        if len(nodes) == want and all(s == "ready" for s in states.values()):
            break
        if time.monotonic() > deadline:
            fail(f"after {patience}s: nodes.list() = {states!r}, want {want} ready")
        time.sleep(0.2)

    hostnames = sorted(n.attrs["Description"]["Hostname"] for n in nodes)
    check(hostnames == [f"node{i}" for i in range(1, want + 1)], f"hostnames {hostnames!r}")
    by_id = {n.id: n for n in nodes}
    check(node_id in by_id, f"init node {node_id} not in {list(by_id)}")
    check(
        by_id[node_id].attrs.get("ManagerStatus", {}).get("Leader") is True,
        f"init node not leader: {by_id[node_id].attrs!r}",
    )
    check(manager.nodes.get(node_id).id == node_id, "nodes.get by ID")

    if len(clients) > 1:
        try:
            clients[1].nodes.list()
            fail("nodes.list() on a worker must fail")
        except APIError as e:
            check("This node is not a swarm manager" in str(e), f"worker nodes.list(): {e}")

    print(f"form_swarm.py: ok, {want} nodes ready: {hostnames}")


if __name__ == "__main__":
    main()
