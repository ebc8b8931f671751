"""Images through the daemon and the CLI, from a real registry on loopback:
`run IMAGE`, definitions with `image =`, pull policies, `pull`, `images`,
`rmi`, `image prune`, live restore, and nothing left after removal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from supervisor import Client
from supervisor.images import prepare_rootfs
from supervisor.testing import build_image, busybox_layers, skopeo_copy, write_layout

from .daemon_harness import DaemonDirs, dirs, until
from .test_cli import ps, ready
from .test_images import Registry, registry

__all__ = ("dirs", "registry")

pytestmark = pytest.mark.anyio

#: Runs until told to fail (a file in its own snapshot), noting each run.
WAIT_FOR_DIE = (
    "echo ran >> /tmp/ran; while [ ! -e /tmp/die ]; do sleep 0.1; done; rm /tmp/die; exit 3"
)


def ctr(d: DaemonDirs, *args: str) -> list[str]:
    """What containerd's own client sees in the daemon's namespace."""
    done = subprocess.run(["ctr", "-a", d.address, "-n", d.namespace, *args],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.split()


def snapshots(d: DaemonDirs) -> list[str]:
    """Keys and names of the namespace's snapshots (``ctr snapshots ls``)."""
    done = subprocess.run(["ctr", "-a", d.address, "-n", d.namespace, "snapshots", "ls"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return [line.split()[0] for line in done.stdout.splitlines()[1:]]


async def test_run_an_image_with_its_defaults_and_flags_over_them(
    dirs: DaemonDirs, registry: Registry
) -> None:
    await ready(dirs)
    ref = f"{registry.host}/t/bb:1"
    # The image: entrypoint ["sh", "-c"], cmd ["echo $GREETING"], env GREETING=hi, cwd /tmp.
    done = dirs.cli("run", "--rm", ref)
    assert (done.code, done.out) == (0, "hi\n"), done.err
    done = dirs.cli("run", "--rm", "-e", "GREETING=yo", ref)
    assert (done.code, done.out) == (0, "yo\n"), done.err
    done = dirs.cli("run", "--rm", ref, "pwd; cat /hello.txt; id -u")
    assert (done.code, done.out) == (0, "/tmp\nhello from the image\n0\n"), done.err
    done = dirs.cli("run", "--rm", "--entrypoint", "echo", ref, "plain", "words")
    assert (done.code, done.out) == (0, "plain words\n"), done.err
    done = dirs.cli("run", "--rm", "-u", "nobody", "-w", "/", ref, "id -u; pwd")
    assert (done.code, done.out) == (0, "65534\n/\n"), done.err
    assert dirs.cli("run", "-d", "--name", "keep", ref, "sleep 1000").code == 0
    [info] = ps(dirs)
    assert info["image"] == ref and info["command"] == ["sh", "-c", "sleep 1000"]
    listed = json.loads(dirs.cli("images", "--json").out)
    assert [(i["name"], i["containers"]) for i in listed] == [(ref, ["keep"])]
    done = dirs.cli("rmi", ref)
    assert done.code == 125 and "is used by keep" in done.err and done.err.count("\n") == 1
    assert "keep" in snapshots(dirs)
    assert dirs.cli("rm", "-f", "keep").code == 0
    assert "keep" not in snapshots(dirs)
    assert dirs.cli("rmi", ref).out == f"{ref}\n"
    assert ctr(dirs, "images", "ls", "-q") == []
    assert ctr(dirs, "content", "ls", "-q") == []
    assert snapshots(dirs) == []
    assert ps(dirs, "-a") == []


async def test_bad_images_get_one_line_and_leave_nothing(
    dirs: DaemonDirs, registry: Registry
) -> None:
    layer = registry.corrupt.layers[-1]
    path = registry.process.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    await ready(dirs)
    for args, text in (
        (("--pull", "never", f"{registry.host}/t/bb:1"), "its pull policy is never"),
        ((f"{registry.host}/t/nothing:1",), "t/nothing"),
        ((f"{registry.host}/t/corrupt:1",), "digest"),
        (("Not/Valid",), "repository name must be lowercase"),
        (("--rootfs", "/", "--pull", "always", "true"), "apply to an image"),
    ):
        done = dirs.cli("run", "--rm", *args)
        lines = done.err.splitlines()
        assert done.code == 125 and len(lines) == 1 and text in lines[0], (args, done.err)
    assert ps(dirs, "-a") == []
    assert ctr(dirs, "images", "ls", "-q") == []

    # The failed pulls' leases are gone, so a collection takes what they
    # held. (Run here: containerd schedules its own at an interval that grows
    # with how long the last one took, past 30 s on a loaded machine.)
    assert ctr(dirs, "leases", "ls", "-q") == []
    async with Client(dirs.address, dirs.namespace) as client:
        await client.leases.collect_garbage()
    assert snapshots(dirs) == [] and ctr(dirs, "content", "ls", "-q") == []


async def test_pull_images_and_prune(dirs: DaemonDirs, registry: Registry) -> None:
    await ready(dirs)
    multi = f"{registry.host}/t/bb:multi"
    done = dirs.cli("pull", "-q", multi)
    assert (done.code, done.out) == (0, f"{multi}\n"), done.err
    done = dirs.cli("image", "pull", f"{registry.host}/t/bb:v2s2")
    assert done.code == 0 and done.out.split()[1].startswith("sha256:"), done.err
    done = dirs.cli("pull", "--platform", "linux/s390x", multi)
    assert done.code == 125 and "s390x" in done.err and done.err.count("\n") == 1
    names = dirs.cli("images", "-q").out.split()
    assert names == [multi, f"{registry.host}/t/bb:v2s2"]
    table = dirs.cli("images").out.splitlines()
    assert table[0].split() == ["IMAGE", "DIGEST", "SIZE", "CREATED", "CONTAINERS"]
    assert dirs.cli("run", "-d", "--name", "user", multi, "sleep 1000").code == 0
    assert dirs.cli("image", "prune").out == f"{registry.host}/t/bb:v2s2\n"
    assert dirs.cli("images", "-q").out.split() == [multi]
    assert dirs.cli("rm", "-f", "user").code == 0
    assert dirs.cli("image", "rm", multi).code == 0
    assert ctr(dirs, "content", "ls", "-q") == [] and snapshots(dirs) == []


async def test_a_definition_with_an_image_survives_a_daemon_kill(
    dirs: DaemonDirs, registry: Registry
) -> None:
    ref = f"{registry.host}/t/bb:1"
    (dirs.defs / "app.toml").write_text(
        f'image = "{ref}"\ncommand = ["{WAIT_FOR_DIE}"]\nrestart = "always"\n'
    )
    await ready(dirs)  # READY at once: the image is pulled in the background

    async def running() -> bool:
        return [(c["status"], c["image"]) for c in ps(dirs)] == [("running", ref)]

    await until(running)
    [info] = ps(dirs)
    pid = info["pid"]
    dirs.procs[-1].send_signal(signal.SIGKILL)
    dirs.procs[-1].wait()
    # What a daemon killed while making a container leaves: its lease, and
    # the container's snapshot (made under the lease, the record never made).
    async with Client(dirs.address, dirs.namespace) as client:
        lease = await client.leases.create(expire=None)
        await prepare_rootfs(client.stores.with_lease(lease.id), "ghost", ref)
    assert "ghost" in snapshots(dirs) and ctr(dirs, "leases", "ls", "-q") == [lease.id]
    await ready(dirs)

    async def swept() -> bool:  # right after READY
        return "ghost" not in snapshots(dirs) and ctr(dirs, "leases", "ls", "-q") == []

    await until(swept)
    [info] = ps(dirs)
    assert (info["status"], info["pid"]) == ("running", pid)  # adopted, not restarted
    # A restart by the policy mounts the snapshot again.
    # It fails on its own: the policy restarts it on the same snapshot (its
    # files kept: it wrote /tmp/ran).
    assert dirs.cli("exec", "app", "touch", "/tmp/die").code == 0
    for _ in range(600):
        [info] = ps(dirs, "-a")
        if info["restart_count"] == 1 and info["status"] == "running":
            break
        await _tick()
    assert (info["restart_count"], info["status"]) == (1, "running")
    assert dirs.cli("exec", "app", "cat", "/tmp/ran").out == "ran\nran\n"
    (dirs.defs / "app.toml").unlink()
    assert dirs.cli("reload").code == 0
    assert ps(dirs, "-a") == []
    assert "app" not in snapshots(dirs)


async def _tick() -> None:
    import anyio

    await anyio.sleep(0.05)


async def test_import_save_and_an_empty_entrypoint(
    dirs: DaemonDirs, registry: Registry, tmp_path: Path
) -> None:
    await ready(dirs)
    archive = tmp_path / "docker.tar"
    skopeo_copy(f"oci:{registry.layout}:1", f"docker-archive:{archive}:t/dock:2")
    done = dirs.cli("image", "import", str(archive))
    assert (done.code, done.out) == (0, "docker.io/t/dock:2\n"), done.err
    # --entrypoint "" drops the image's (sh -c): the command runs as it is.
    done = dirs.cli("run", "--rm", "--entrypoint", "", "t/dock:2", "echo", "hi")
    assert (done.code, done.out) == (0, "hi\n"), done.err
    saved = tmp_path / "saved.tar"
    assert dirs.cli("image", "save", "t/dock:2", "-o", str(saved)).code == 0
    assert dirs.cli("rmi", "t/dock:2").code == 0
    done = dirs.cli("image", "import", str(saved))
    assert (done.code, done.out) == (0, "docker.io/t/dock:2\n"), done.err
    done = dirs.cli("run", "--rm", "t/dock:2", "cat /hello.txt")
    assert (done.code, done.out) == (0, "hello from the image\n"), done.err
    done = dirs.cli("image", "import", str(tmp_path / "missing.tar"))
    assert done.code == 125 and done.err.count("\n") == 1, done.err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = dirs.cli("image", "import", str(fifo), timeout=30)  # refused, not waited on
    assert done.code == 125 and "not a regular file" in done.err, done.err
    for where in (tmp_path, tmp_path / "no" / "such.tar"):
        done = dirs.cli("image", "save", "t/dock:2", "-o", str(where))
        assert done.code == 125 and done.err.count("\n") == 1, done.err
        assert "Internal" not in done.err
    assert dirs.cli("rmi", "t/dock:2").code == 0
    unnamed = tmp_path / "unnamed.tar"
    skopeo_copy(f"oci:{registry.layout}:1", f"oci-archive:{unnamed}")
    done = dirs.cli("image", "import", str(unnamed))
    assert done.code == 125 and "give a base name" in done.err, done.err
    done = dirs.cli("image", "import", "--name", "local/named:7", str(unnamed))
    assert (done.code, done.out) == (0, "docker.io/local/named:7\n"), done.err
    assert dirs.cli("rmi", "local/named:7").code == 0


async def test_a_definition_waiting_for_its_image_holds_neither_ready_nor_sigterm(
    dirs: DaemonDirs,
) -> None:
    # A "registry" that takes connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        port = silent.getsockname()[1]
        (dirs.defs / "slow.toml").write_text(f'image = "127.0.0.1:{port}/slow/app:1"\n')
        started = time.monotonic()
        await ready(dirs)
        assert time.monotonic() - started < 30
        assert [c["id"] for c in ps(dirs, "-a")] == []  # waiting for its image
        assert "slow waits for its image" in dirs.output()
        # Nor a run that needs no image: the sweep of what pulls left (due
        # right after READY) waits for a moment without pulls instead of
        # holding every create behind the stuck one (it did, for up to the
        # pull's timeout).
        began = time.monotonic()
        done = dirs.cli(
            "run", "-d", "--name", "plain", "--rootfs", str(dirs.rootfs), "sleep", "100"
        )
        assert done.code == 0, done.err
        assert time.monotonic() - began < 10
        assert dirs.cli("rm", "-f", "plain").code == 0
        dirs.procs[-1].terminate()
        assert dirs.procs[-1].wait(30) == 0
    finally:
        silent.close()


async def test_pulls_of_images_sharing_layers_at_once(dirs: DaemonDirs, registry: Registry) -> None:
    await ready(dirs)
    refs = [f"{registry.host}/t/bb:1", f"{registry.host}/t/bb:v2s2", f"{registry.host}/t/bb:multi"]
    for _ in range(3):
        pulls = [dirs.cli_process("pull", "-q", ref) for ref in refs]
        outcomes = [(p.wait(120), p.stderr.read()) for p in pulls]  # type: ignore[union-attr]
        assert outcomes == [(0, b"")] * 3
        assert dirs.cli("rmi", *refs).code == 0
    assert ctr(dirs, "images", "ls", "-q") == []


async def test_users_by_name_in_an_image_of_many_layers_and_in_exec(
    dirs: DaemonDirs, registry: Registry, tmp_path: Path
) -> None:
    # 48 layers: more than one mount's options (a page) can name with full paths.
    layers = [*busybox_layers(), *({f"l{i}": b"x"} for i in range(45))]
    image = build_image(layers, config={"Cmd": ["sleep", "1000"]})
    layout = write_layout(tmp_path / "layout", {"many": [image]})
    ref = f"{registry.host}/t/many:1"
    skopeo_copy(f"oci:{layout}:many", f"docker://{ref}")
    await ready(dirs)
    done = dirs.cli("run", "--rm", "-u", "nobody", ref, "id", "-u")
    assert (done.code, done.out) == (0, "65534\n"), done.err
    assert dirs.cli("run", "-d", "--name", "e", ref).code == 0
    done = dirs.cli("exec", "-u", "nobody:nogroup", "e", "id")
    assert (done.code, done.out) == (0, "uid=65534(nobody) gid=65534(nogroup)\n"), done
    done = dirs.cli("exec", "-u", "nosuch", "e", "true")
    assert done.code == 125 and "'nosuch' is not in the image's /etc/passwd" in done.err, done
    assert dirs.cli("rm", "-f", "e").code == 0
    assert dirs.cli("rmi", ref).code == 0


async def test_leftover_leases_go_when_containerd_comes_back(dirs: DaemonDirs) -> None:
    await ready(dirs)
    async with Client(dirs.address, dirs.namespace) as client:
        left = await client.leases.create()  # as a pull whose delete met containerd away
    assert ctr(dirs, "leases", "ls", "-q") == [left.id]
    pid = int((dirs.state / "containerd" / "containerd.pid").read_text())
    os.kill(pid, signal.SIGKILL)

    async def swept() -> bool:
        try:
            return ctr(dirs, "leases", "ls", "-q") == []
        except subprocess.CalledProcessError:
            return False  # containerd not back yet

    await until(swept)
