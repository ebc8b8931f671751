from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def busybox_rootfs(target: str | os.PathLike[str]) -> Path:
    """Make a minimal rootfs at ``target`` from the host's static busybox.

    ``bin/busybox`` plus a symlink per applet, empty ``proc dev sys tmp``, and
    an ``etc/passwd`` and ``etc/group`` with root and nobody. Running it again
    on an existing rootfs is harmless.
    """
    busybox = next((p for p in _BUSYBOX_CANDIDATES if os.path.exists(p)), None)
    if busybox is None:
        raise FileNotFoundError("busybox is not installed (Debian: busybox-static)")
    root = Path(target)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("proc", "dev", "sys", "tmp", "etc", "root"):
        (root / name).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    target = root / "bin" / "busybox"
    # Idempotent: containers may be running from an existing copy ("text file busy").
    if not target.exists() or target.stat().st_size != os.stat(busybox).st_size:
        shutil.copy2(busybox, target)
    applets = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return root
