"""Image references, parsed and normalised as docker does (distribution's
``reference`` package): ``busybox`` is ``docker.io/library/busybox:latest``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
#: Where docker.io's registry API is served.
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
NAME_MAX_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference.

    ``str(ref)`` is the full form containerd's image records are named by:
    ``docker.io/library/busybox:latest``, ``host:5000/a/b@sha256:...``.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository with its domain: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def registry_host(self) -> str:
        """The host (and port) whose registry API serves the repository."""
        return DOCKER_HUB_REGISTRY if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar(self) -> str:
        """The short form docker shows: ``busybox:latest``, ``me/app:1``."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path.removeprefix(_OFFICIAL_PREFIX)
        return name + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, None)

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or (
        "." not in first and ":" not in first and first != "localhost" and first.lower() == first
    ):
        return DEFAULT_DOMAIN, name
    return first, rest


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference: add ``docker.io``, ``library/`` and
    the ``latest`` tag (unless a digest is given) as docker does.

    Raises :class:`~supervisor.errors.InvalidArgument` with a one-line reason.
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument("image reference is empty")
    shown = text if text.isprintable() and len(text) < 300 else repr(text[:300])
    if _SHA256_HEX.fullmatch(text):
        raise InvalidArgument(f"image reference {shown}: a 64-hex id is not a reference")
    rest, at, digest = text.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"image reference {shown}: invalid digest {digest!r}")
        algorithm, _, hexpart = digest.partition(":")
        if algorithm == "sha256" and not _SHA256_HEX.fullmatch(hexpart):
            raise InvalidArgument(f"image reference {shown}: sha256 digest needs 64 hex digits")
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"image reference {shown}: invalid tag {tag!r}")
    domain, path = _split_domain(rest)
    if not _DOMAIN.fullmatch(domain):
        raise InvalidArgument(f"image reference {shown}: invalid registry {domain!r}")
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if path.lower() != path:
        raise InvalidArgument(f"image reference {shown}: repository name must be lowercase")
    if not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise InvalidArgument(f"image reference {shown}: invalid repository name {path!r}")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    if len(domain) + 1 + len(path) > NAME_MAX_LENGTH:
        raise InvalidArgument(f"image reference {shown}: name longer than {NAME_MAX_LENGTH}")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest or None)


def normalize(text: str) -> str:
    """The full name containerd's image record has for ``text``."""
    return str(parse_reference(text))
