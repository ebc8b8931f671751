"""A private image registry (Debian's ``docker-registry``, distribution 2.8)
on loopback, and ``skopeo`` to push to it."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: How long the registry gets to serve /v2/ (it is up in ~100 ms).
REGISTRY_START_TIMEOUT = 15.0
REGISTRY_STOP_TIMEOUT = 10.0
#: Bound on one skopeo copy of a test image to or from loopback.
SKOPEO_TIMEOUT = 120.0
_POLL = 0.02

_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class RegistryProcess:
    """A running registry: its address (``127.0.0.1:PORT``), storage and process."""

    base: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (tests corrupt it there)."""
        hexpart = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def stop(self) -> None:
        """SIGTERM the registry (this process, by its pid), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(REGISTRY_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(REGISTRY_STOP_TIMEOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_registry(base: str | Path) -> RegistryProcess:
    """Start ``docker-registry serve`` on a free loopback port, storing in
    ``base/storage``; returns once it answers ``GET /v2/``."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise FileNotFoundError("docker-registry is not installed (Debian: docker-registry)")
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = base / "config.yml"
    config.write_text(_CONFIG.format(root=base / "storage", port=port))
    with open(base / "registry.log", "ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    registry = RegistryProcess(base, port, process)
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: see {base / 'registry.log'}")
        url = f"http://{registry.host}/v2/"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
            if reply.status == 200:
                return registry
        if time.monotonic() > deadline:
            registry.stop()
            raise TimeoutError(f"docker-registry did not serve within {REGISTRY_START_TIMEOUT} s")
        time.sleep(_POLL)


def skopeo_copy(source: str, destination: str, *extra: str) -> None:
    """``skopeo copy`` between transports (``oci:DIR:TAG``,
    ``docker://127.0.0.1:PORT/name:tag``, ``oci-archive:FILE``...), TLS off."""
    binary = shutil.which("skopeo")
    if binary is None:
        raise FileNotFoundError("skopeo is not installed (Debian: skopeo)")
    args = [binary, "--insecure-policy", "copy", "--quiet"]
    if source.startswith("docker://"):
        args.append("--src-tls-verify=false")
    if destination.startswith("docker://"):
        args.append("--dest-tls-verify=false")
    done = subprocess.run(
        [*args, *extra, source, destination],
        capture_output=True,
        text=True,
        timeout=SKOPEO_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"skopeo copy {source} {destination}: {done.stderr.strip()}")
