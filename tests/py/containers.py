#!/usr/bin/env python3
"""Run containers with the Python docker SDK, as an operator's script would.

usage: containers.py SOCK

The node must reach the test registry as its Docker Hub mirror. Pulls
busybox, runs a container to completion (output, exit code), runs one in
the background, execs into it, reads its logs, stops and removes it, and
checks Docker's errors for a missing image and container. Exits non-zero
on any failed check.
"""

import sys

import docker
from docker.errors import ContainerError, ImageNotFound, NotFound


def fail(msg):
    print(f"containers.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main():
    sock = sys.argv[1]
    client = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=120)
    image = client.images.pull("busybox", tag="latest")
    check("busybox:latest" in image.tags, f"pulled tags {image.tags}")
    check(image.id.startswith("sha256:"), f"image id {image.id}")

    out = client.containers.run("busybox", ["sh", "-c", "echo from-py"], remove=True)
    check(out == b"from-py\n", f"run output {out!r}")
    try:
        client.containers.run("busybox", ["sh", "-c", "echo boom >&2; exit 4"], remove=True)
        fail("a failing container raised nothing")
    except ContainerError as e:
        check(e.exit_status == 4, f"exit status {e.exit_status}")

    c = client.containers.run(
        "busybox",
        ["sh", "-c", "echo started; sleep 600"],
        detach=True,
        name="pyctr",
        environment={"FROM_PY": "yes"},
        labels={"made-by": "docker-py"},
    )
    c.reload()
    check(c.status == "running", f"status {c.status}")
    check(c.name == "pyctr", f"name {c.name}")
    ip = c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    check(ip.startswith("198.18.1."), f"bridge address {ip!r}")
    code, output = c.exec_run(["sh", "-c", "echo $FROM_PY"])
    check(code == 0 and output == b"yes\n", f"exec_run {code} {output!r}")
    listed = client.containers.list(filters={"label": "made-by=docker-py"})
    check([x.name for x in listed] == ["pyctr"], f"list by label {listed}")
    for _ in range(50):
        if b"started" in c.logs():
            break
    check(b"started\n" in c.logs(), f"logs {c.logs()!r}")
    c.stop(timeout=1)
    c.reload()
    check(c.status == "exited", f"status after stop {c.status}")
    c.remove()
    try:
        client.containers.get("pyctr")
        fail("removed container still found")
    except NotFound:
        pass
    try:
        client.containers.run("nosuchimage-py", "true")
        fail("a missing image raised nothing")
    except ImageNotFound:
        pass
    except docker.errors.APIError as e:
        check(e.status_code == 404, f"missing image: {e}")
    print("containers.py: ok")


if __name__ == "__main__":
    main()
