"""Prometheus metrics: a real daemon scraped over a unix socket and over TCP, the
text parsed with prometheus_client's own parser."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import Client, NotFound

from .daemon_harness import DaemonDirs, dirs, until

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio


def http_get(address: Path | tuple[str, int], target: str = "/metrics") -> tuple[str, str]:
    """One HTTP/1.1 GET the plain way, as a scraper does; (status line, body)."""
    family = socket.AF_UNIX if isinstance(address, Path) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(address) if isinstance(address, Path) else address)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().splitlines()[0], body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_scrape_shows_containers_and_the_daemon(dirs: DaemonDirs) -> None:
    metrics_sock = dirs.base / "metrics.sock"
    with dirs.config.open("a") as config:
        config.write(f'[metrics]\naddress = "unix:{metrics_sock}"\n')
    dirs.define("web", ["sleep", "1000"], memory='"64m"')
    dirs.define("flaky", ["sh", "-c", "exit 3"], restart="on-failure:2")
    dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:

        async def flaky_done() -> bool:  # its last exit recorded, no start due, no task
            labels = (await client.load_container("flaky")).info.labels
            prefix = "io.containerd-supervisor/"
            if labels.get(prefix + "restart-count") != "2" or prefix + "next-start" in labels:
                return False
            try:
                await client.process_state("flaky")
            except NotFound:
                return True
            return False

        await until(flaky_done)
    assert dirs.cli("ps").code == 0
    assert dirs.cli("inspect", "ghost").code == 125

    status, body = await anyio.to_thread.run_sync(http_get, metrics_sock)
    assert status == "HTTP/1.1 200 OK"
    got = samples(body)
    web = (("id", "web"), ("image", ""), ("rootfs", str(dirs.rootfs)))
    assert got[("supervisor_container_state", (*web, ("state", "running")))] == 1
    assert got[("supervisor_container_state", (*web, ("state", "stopped")))] == 0
    assert got[("supervisor_container_memory_limit_bytes", web)] == 64 << 20
    assert 0 < got[("supervisor_container_memory_usage_bytes", web)] < 64 << 20
    assert got[("supervisor_container_pids", web)] == 1
    assert got[("supervisor_container_cpu_seconds_total", web)] >= 0
    # --network none (the harness's default): lo only, not counted.
    assert got[("supervisor_container_network_receive_bytes_total", web)] == 0
    flaky = (("id", "flaky"), ("image", ""), ("rootfs", str(dirs.rootfs)))
    assert got[("supervisor_container_restarts_total", flaky)] == 2
    assert got[("supervisor_container_last_exit_code", flaky)] == 3
    assert ("supervisor_container_pids", flaky) not in got  # no task, no figures
    assert got[("supervisor_containerd_up", ())] == 1
    assert got[("supervisor_containers", ())] == 2
    assert got[("supervisor_events_received_total", ())] >= 6  # 3 runs: create, start, exit...
    assert got[("supervisor_events_reconnects_total", ())] == 0
    calls = "supervisor_control_call_seconds_count"
    assert got[(calls, (("code", "OK"), ("method", "List")))] == 1
    assert got[(calls, (("code", "NOT_FOUND"), ("method", "Inspect")))] == 1

    status, _ = await anyio.to_thread.run_sync(http_get, metrics_sock, "/other")
    assert status == "HTTP/1.1 404 Not Found"
    assert dirs.cli("rm", "-f", "web", "flaky").code == 0
    for proc in dirs.procs:
        proc.terminate()
        assert proc.wait(30) == 0
    assert not metrics_sock.exists()


async def test_scrape_over_tcp_on_loopback(dirs: DaemonDirs) -> None:
    port = free_port()
    with dirs.config.open("a") as config:
        config.write(f'[metrics]\naddress = "127.0.0.1:{port}"\n')
    dirs.start()
    await dirs.message("READY=1")
    status, body = await anyio.to_thread.run_sync(http_get, ("127.0.0.1", port))
    assert status == "HTTP/1.1 200 OK"
    assert samples(body)[("supervisor_containerd_up", ())] == 1
    assert f"metrics on 127.0.0.1:{port}/metrics" in dirs.output()
