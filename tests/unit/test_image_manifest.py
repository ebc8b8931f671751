"""Manifests, indexes, platform selection, image configs and chain ids."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from supervisor.errors import ImageError, InvalidArgument, PlatformNotFound
from supervisor.images import ImageConfig, Index, Manifest, Platform, chain_ids
from supervisor.images._manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    media_type_of,
)


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def entry(n: int, arch: str, variant: str = "", os: str = "linux") -> dict[str, Any]:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": OCI_MANIFEST, "digest": digest(n), "size": 10, "platform": platform}


def index(*entries: dict[str, Any], media_type: str | None = OCI_INDEX) -> bytes:
    body: dict[str, Any] = {"schemaVersion": 2, "manifests": list(entries)}
    if media_type:
        body["mediaType"] = media_type
    return json.dumps(body).encode()


def test_platform_parse_and_host() -> None:
    assert Platform.parse("linux/amd64") == Platform("linux", "amd64")
    assert Platform.parse("arm64") == Platform("linux", "arm64")
    assert Platform.parse("Linux/ARM/v7") == Platform("linux", "arm", "v7")
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    assert Platform.host().os == "linux"
    for bad in ("", "linux/", "a/b/c/d", "/amd64"):
        with pytest.raises(InvalidArgument):
            Platform.parse(bad)


def test_index_selects_by_platform() -> None:
    idx = Index.parse(index(entry(1, "arm", "v7"), entry(2, "amd64"), entry(3, "arm64", "v8")))
    assert idx.select(Platform("linux", "amd64")).digest == digest(2)
    assert idx.select(Platform("linux", "arm64")).digest == digest(3)
    assert idx.select(Platform("linux", "arm", "v7")).digest == digest(1)
    with pytest.raises(PlatformNotFound) as caught:
        idx.select(Platform("linux", "arm", "v6"))
    assert str(caught.value) == (
        "no manifest for platform linux/arm/v6 (the image has: linux/amd64, linux/arm/v7, "
        "linux/arm64/v8)"
    )
    with pytest.raises(PlatformNotFound, match="windows/amd64"):
        Index.parse(index(entry(4, "amd64", os="windows"))).select(Platform("linux", "amd64"))


def test_index_skips_attestations_and_unknown_platforms() -> None:
    attestation = {"mediaType": OCI_MANIFEST, "digest": digest(9), "size": 5,
                   "platform": {"os": "unknown", "architecture": "unknown"}}  # fmt: skip
    idx = Index.parse(index(attestation, entry(2, "amd64")))
    assert idx.select(Platform("linux", "amd64")).digest == digest(2)


def test_media_type_from_field_header_or_shape() -> None:
    assert media_type_of(index(media_type=DOCKER_MANIFEST_LIST)) == DOCKER_MANIFEST_LIST
    assert media_type_of(index(media_type=None)) == OCI_INDEX
    assert media_type_of(index(media_type=None), DOCKER_MANIFEST_LIST) == DOCKER_MANIFEST_LIST
    assert media_type_of(b'{"schemaVersion":2,"layers":[]}') == OCI_MANIFEST
    with pytest.raises(ImageError, match="not valid JSON"):
        media_type_of(b"{")


def manifest(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": digest(1), "size": 3},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": digest(2), "size": 4}],
    }  # fmt: skip
    body.update(changes)
    return json.dumps(body).encode()


def test_manifest_parse() -> None:
    parsed = Manifest.parse(manifest())
    assert parsed.media_type == DOCKER_MANIFEST
    assert parsed.config.digest == digest(1)
    assert [(d.digest, d.size) for d in parsed.layers] == [(digest(2), 4)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schemaVersion": 1}, "unsupported manifest"),
        ({"mediaType": "application/vnd.docker.distribution.manifest.v1+json"}, "unsupported"),
        ({"layers": None}, "no layer list"),
        ({"config": {"digest": "sha256:abc", "size": 1}}, "without a sha256 digest"),
        ({"config": {"digest": digest(1), "size": -1}}, "no valid size"),
        ({"config": {"digest": digest(1), "size": True}}, "no valid size"),
        ({"layers": [{"mediaType": "text/plain", "digest": digest(2), "size": 1}]},
         "unsupported media type"),
        ({"layers": ["x"]}, "not an object"),
    ],
)  # fmt: skip
def test_manifest_rejects(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        Manifest.parse(manifest(**changes))


def test_image_config_defaults() -> None:
    config = ImageConfig.parse(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/entry"], "Cmd": ["a", "b"], "Env": ["A=1", "B=x=y", "A=2"],
                   "WorkingDir": "/w", "User": "1000:1000", "StopSignal": "SIGINT",
                   "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}, "Labels": {"k": "v"}},
        "rootfs": {"type": "layers", "diff_ids": [digest(1), digest(2)]},
    }).encode())  # fmt: skip
    assert config.args == ("/entry", "a", "b")
    assert config.env_dict() == {"A": "2", "B": "x=y"}
    assert (config.working_dir, config.user, config.stop_signal) == ("/w", "1000:1000", "SIGINT")
    assert config.exposed_ports == ("53/udp", "8080/tcp")
    assert config.labels == {"k": "v"}
    assert config.diff_ids == (digest(1), digest(2))
    empty = ImageConfig.parse(b'{"config": null, "rootfs": {"diff_ids": []}}')
    assert (empty.args, empty.env, empty.user) == ((), (), "")
    for bad in (b'{"config": {"Cmd": "echo"}}', b'{"config": {"User": 0}}', b"[]"):
        with pytest.raises(ImageError):
            ImageConfig.parse(bad)


def test_chain_ids_as_containerd_computes_them() -> None:
    diff_ids = [digest(1), digest(2), digest(3)]
    second = "sha256:" + hashlib.sha256(f"{digest(1)} {digest(2)}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {digest(3)}".encode()).hexdigest()
    assert chain_ids(diff_ids) == [digest(1), second, third]
    assert chain_ids([]) == []
