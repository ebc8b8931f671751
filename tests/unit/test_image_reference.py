"""Image references normalised as docker's distribution/reference does."""

from __future__ import annotations

import pytest

from supervisor.errors import InvalidArgument
from supervisor.images import Reference, normalize, parse_reference

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "full"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
        ("me/app", "docker.io/me/app:latest"),
        ("me/app/sub:v1", "docker.io/me/app/sub:v1"),
        ("quay.io/org/app:v1.2-3_x", "quay.io/org/app:v1.2-3_x"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("127.0.0.1:5000/t/bb:1", "127.0.0.1:5000/t/bb:1"),
        ("[::1]:5000/app:2", "[::1]:5000/app:2"),
        ("Registry.Example.com/app", "Registry.Example.com/app:latest"),
        ("Host/app", "Host/app:latest"),
        (f"busybox@{SHA}", f"docker.io/library/busybox@{SHA}"),
        (f"busybox:1@{SHA}", f"docker.io/library/busybox:1@{SHA}"),
        (f"host:5000/a/b@{SHA}", f"host:5000/a/b@{SHA}"),
        ("a-b__c/d.e_f", "docker.io/a-b__c/d.e_f:latest"),
        ("example.com/a--b", "example.com/a--b:latest"),
    ],
)
def test_normalises_as_docker_does(text: str, full: str) -> None:
    assert normalize(text) == full
    assert normalize(full) == full


def test_parts() -> None:
    ref = parse_reference("localhost:5000/team/app:v2")
    assert ref == Reference("localhost:5000", "team/app", "v2", None)
    assert (ref.name, ref.registry_host, ref.object) == ("localhost:5000/team/app",
                                                         "localhost:5000", "v2")  # fmt: skip
    hub = parse_reference(f"busybox:1@{SHA}")
    assert (hub.registry_host, hub.object, hub.familiar) == (
        "registry-1.docker.io",
        SHA,
        f"busybox:1@{SHA}",
    )
    assert parse_reference("me/app").familiar == "me/app:latest"
    assert parse_reference("quay.io/x/y:1").familiar == "quay.io/x/y:1"
    assert str(parse_reference("busybox").with_tag("2")) == "docker.io/library/busybox:2"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("me/App", "must be lowercase"),
        ("a" * 64, "64-hex id"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "x" * 129, "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "g" * 64, "64 hex digits"),
        ("busybox@sha256:" + "a" * 63, "64 hex digits"),
        ("busybox@md5:!!", "invalid digest"),
        ("busybox@sha256:" + "A" * 64, "64 hex digits"),
        ("busybox@", "invalid digest"),
        ("/busybox", "invalid repository"),
        ("busybox/", "invalid repository"),
        ("a//b", "invalid repository"),
        ("a_-b", "invalid repository"),
        ("-a", "invalid repository"),
        ("a.", "invalid repository"),
        ("host:5000/", "invalid repository"),
        ("host:port/app", "invalid registry"),
        ("-host.com/app", "invalid registry"),
        ("a.b_c/e", "invalid registry"),
        ("bad host.com/app", "invalid registry"),
        ("a b", "invalid repository"),
        ("example.com/" + "a" * 250, "longer than 255"),
        ("line\nbreak", "invalid"),
    ],
)
def test_rejects_with_one_line(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_reference(text)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_a_string() -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(None)  # type: ignore[arg-type]
