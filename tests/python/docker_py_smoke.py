"""docker-py against vesseld: the calls CI systems and test frameworks make.

Run with DOCKER_HOST pointing at a vesseld that has busybox:latest loaded.
Every check raises on failure; the last line says all passed.
"""

import time

import docker


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


client = docker.from_env(timeout=60)
check(client.ping(), "ping")
version = client.version()
check(version["ApiVersion"] >= "1.44", "API version %s" % version["ApiVersion"])
check(client.info()["OSType"] == "linux", "info")

start = int(time.time())

# run without detach returns the output
out = client.containers.run("busybox", ["sh", "-c", "echo hello; echo err >&2"], remove=True)
check(out == b"hello\n", "run returns stdout: %r" % out)

try:
    client.containers.run("busybox", ["sh", "-c", "exit 3"], remove=True)
    raise AssertionError("a failing run must raise")
except docker.errors.ContainerError as e:
    check(e.exit_status == 3, "ContainerError carries the exit status")

# detached, streaming logs, exec, wait, remove
c = client.containers.run(
    "busybox",
    ["sh", "-c", "for i in 1 2 3; do echo line$i; done; while [ ! -e /tmp/stop ]; do sleep 0.05; done; exit 4"],
    detach=True,
    name="pysdk",
    environment={"GREETING": "hi"},
    labels={"suite": "docker-py"},
)
check(c.name == "pysdk", "detached run has the name")
c.reload()
check(c.status == "running", "status running")
check(c.labels.get("suite") == "docker-py", "labels")
stream = c.logs(stream=True, follow=True)
seen = b""
for chunk in stream:
    seen += chunk
    if seen.count(b"\n") >= 3:
        break
check(seen == b"line1\nline2\nline3\n", "streamed logs %r" % seen)
res = c.exec_run(["sh", "-c", "echo $GREETING; exit 2"])
check(res.exit_code == 2 and res.output == b"hi\n", "exec_run %r" % (res,))
res = c.exec_run(["touch", "/tmp/stop"])
check(res.exit_code == 0, "exec_run touch")
status = c.wait(timeout=60)
check(status["StatusCode"] == 4, "wait returns the exit code %r" % status)
check(b"line3" in c.logs(), "logs after exit")
listed = [x.name for x in client.containers.list(all=True, filters={"label": "suite=docker-py"})]
check(listed == ["pysdk"], "list with a label filter %r" % listed)
c.remove()
check(not client.containers.list(all=True, filters={"name": "pysdk"}), "removed")

# images
img = client.images.get("busybox:latest")
check(img.id.startswith("sha256:"), "images.get")
check(any("busybox:latest" in i.tags for i in client.images.list()), "images.list")
img.tag("pysdk/busybox", "v1")
check("pysdk/busybox:v1" in client.images.get("pysdk/busybox:v1").tags, "tag")
client.images.remove("pysdk/busybox:v1")
try:
    client.images.get("pysdk/busybox:v1")
    raise AssertionError("the removed tag must be gone")
except docker.errors.ImageNotFound:
    check(True, "untagged")
try:
    client.containers.get("no-such-container")
    raise AssertionError("a missing container must raise")
except docker.errors.NotFound:
    check(True, "NotFound for a missing container")

# volumes
v = client.volumes.create("pysdk-data", labels={"suite": "docker-py"})
out = client.containers.run("busybox", ["sh", "-c", "echo kept > /d/f; cat /d/f"],
                            volumes={"pysdk-data": {"bind": "/d", "mode": "rw"}}, remove=True)
check(out == b"kept\n", "volume mount")
check(any(x.name == "pysdk-data" for x in client.volumes.list()), "volumes.list")
v.remove()
check(not any(x.name == "pysdk-data" for x in client.volumes.list()), "volume removed")

# events since the start of this script
actions = set()
for ev in client.events(since=start, until=int(time.time()) + 1, decode=True,
                        filters={"type": "container"}):
    actions.add(ev["Action"])
for a in ("create", "start", "die", "destroy"):
    check(a in actions, "event %s (saw %s)" % (a, sorted(actions)))

print("docker-py: all checks passed")
