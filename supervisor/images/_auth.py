"""Registry credentials (a docker-style ``config.json``) and auth challenges."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument
from ._reference import DEFAULT_DOMAIN, DOCKER_HUB_REGISTRY

#: The key docker uses for Docker Hub in config.json.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = (DEFAULT_DOMAIN, DOCKER_HUB_REGISTRY, "index.docker.io")
_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)=(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')


def default_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str

    def basic(self) -> str:
        """The ``Authorization`` header value for HTTP Basic."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _host_of(key: str) -> str:
    key = key.removeprefix("https://").removeprefix("http://")
    return key.split("/", 1)[0].lower()


class CredentialStore:
    """Credentials by registry host, as docker's ``config.json`` holds them
    (``auths.<host>.auth`` = base64 ``user:password``, or ``username`` and
    ``password``). Credential helpers are not run."""

    def __init__(self, entries: Mapping[str, Credentials] | None = None) -> None:
        self._by_host = {_host_of(k): v for k, v in (entries or {}).items()}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> CredentialStore:
        """Read ``path`` (default :func:`default_config_path`); a missing file is empty."""
        file = Path(path) if path is not None else default_config_path()
        try:
            text = file.read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise InvalidArgument(f"{file}: {exc.strerror or exc}") from None
        try:
            auths = json.loads(text).get("auths") or {}
        except (ValueError, AttributeError):
            raise InvalidArgument(f"{file}: not a docker config (JSON object)") from None
        entries: dict[str, Credentials] = {}
        if isinstance(auths, Mapping):
            for key, value in auths.items():
                found = _entry(value)
                if found is not None:
                    entries[str(key)] = found
        return cls(entries)

    def get(self, host: str) -> Credentials | None:
        """The credentials for a registry host (``docker.io`` and its API
        host share Docker Hub's)."""
        host = host.lower()
        if host in _HUB_HOSTS:
            for alias in (_host_of(DOCKER_HUB_AUTH_KEY), *_HUB_HOSTS):
                if alias in self._by_host:
                    return self._by_host[alias]
            return None
        return self._by_host.get(host)


def _entry(value: object) -> Credentials | None:
    if not isinstance(value, Mapping):
        return None
    auth = value.get("auth")
    if isinstance(auth, str) and auth:
        try:
            name, sep, secret = base64.b64decode(auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(name, secret) if sep else None
    user, password = value.get("username"), value.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return Credentials(user, password)
    return None


def save_credentials(
    host: str, credentials: Credentials, path: str | os.PathLike[str] | None = None
) -> Path:
    """Record ``credentials`` for ``host`` in a docker-style config.json (what
    ``docker login`` writes), keeping its other entries; the file is 0600."""
    file = Path(path) if path is not None else default_config_path()
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        config = {}
    except ValueError:
        raise InvalidArgument(f"{file}: not valid JSON") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{file}: not a JSON object")
    key = DOCKER_HUB_AUTH_KEY if host.lower() in _HUB_HOSTS else host
    auth = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    config.setdefault("auths", {})[key] = {"auth": auth}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=2)
    os.replace(tmp, file)
    return file


@dataclass(frozen=True, slots=True)
class Challenge:
    """A ``WWW-Authenticate`` challenge: its scheme and parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, e.g.
    ``Bearer realm="https://auth.docker.io/token",service="registry.docker.io"``."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {}
    for m in _PARAM.finditer(rest):
        quoted, bare = m.group(2), m.group(3)
        params[m.group(1).lower()] = quoted.replace('\\"', '"') if quoted is not None else bare
    return Challenge(scheme.lower(), params)
