"""A client of the OCI distribution API (a registry) over httpx.

It asks for manifests with every manifest and index media type, answers
bearer-token challenges (anonymously, or with the registry's credentials),
caches tokens per scope until they expire, and follows redirects itself so
that the registry's ``Authorization`` never goes to another host. httpx's
exceptions become :class:`~supervisor.errors.RegistryError` in one place,
:func:`_map_http_errors`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Self

import httpcore
import httpx

from ..errors import RegistryAuthError, RegistryError, one_line
from ._auth import Challenge, CredentialStore, parse_challenge
from ._manifest import ACCEPT, MAX_MANIFEST_SIZE
from ._reference import Reference

CONNECT_TIMEOUT = 15.0
#: Bound on each read from the registry (not on a whole blob).
READ_TIMEOUT = 60.0
MAX_REDIRECTS = 5
#: A token without ``expires_in`` lives this long (the distribution spec's default).
DEFAULT_TOKEN_TTL = 60.0
#: A cached token is renewed this long before it expires.
TOKEN_MARGIN = 5.0
#: The part of a failed reply's body shown in the error.
ERROR_BODY_LIMIT = 2048
_REDIRECTS = (301, 302, 303, 307, 308)
#: Most bytes httpcore asks of the socket at once while reading a reply.
READ_SIZE = 1 << 20

# httpcore reads a body 64 KiB at a time, and anyio cuts each chunk asyncio
# received (up to 256 KiB) into pieces of that size, copying the rest each
# time: four trips through anyio, httpcore, h11 and httpx per socket read, a
# 50 MB pull's 1,600 reads were a fifth of its CPU. With reads bigger than
# any chunk asyncio receives, each chunk goes through once. It is a class
# constant of httpcore's (no per-client setting), raised, never lowered, for
# the whole process; it bounds a read, it reserves no memory.
if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE


def _bare_host(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """Whether ``host`` (maybe with a port) is this machine's loopback."""
    bare = _bare_host(host)
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _map_http_errors(what: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RegistryError(f"{what}: timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise RegistryError(f"{what}: {one_line(str(exc)) or type(exc).__name__}") from exc


class RegistryClient:
    """An async client of image registries; use it as an async context manager.

    ``insecure`` lists registry hosts (``host`` or ``host:port``) spoken to
    over plain ``http://``; loopback registries always are. ``credentials``
    default to those of the docker config file. ``transport`` and ``mounts``
    go to :class:`httpx.AsyncClient` (tests use them for fake servers).
    """

    def __init__(
        self,
        *,
        credentials: CredentialStore | None = None,
        insecure: Iterable[str] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.credentials = credentials if credentials is not None else CredentialStore.load()
        self.insecure = frozenset(h.lower() for h in insecure)
        self._http = httpx.AsyncClient(
            transport=transport,
            mounts=dict(mounts) if mounts else None,
            follow_redirects=False,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            headers={"User-Agent": "containerd-supervisor"},
        )
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    def base_url(self, host: str) -> str:
        """``https://host``, or ``http://host`` for an insecure registry."""
        insecure = host.lower() in self.insecure or _bare_host(host).lower() in self.insecure
        return f"{'http' if insecure or is_loopback(host) else 'https'}://{host}"

    async def manifest(self, ref: Reference, obj: str | None = None) -> tuple[bytes, str]:
        """The manifest or index named by ``obj`` (a tag or digest; the
        reference's own by default) and the media type the registry declared."""
        obj = obj or ref.object
        what = f"get manifest {ref.name}:{obj}" if ":" not in obj else f"get {ref.name}@{obj}"
        async with self._open(ref, f"manifests/{obj}", what, accept=ACCEPT) as response:
            declared = response.headers.get("content-type", "").split(";")[0].strip()
            length = int(response.headers.get("content-length") or 0)
            if length > MAX_MANIFEST_SIZE:
                raise RegistryError(f"{what}: manifest of {length} bytes is too big")
            parts: list[bytes] = []
            size = 0
            with _map_http_errors(what):
                async for part in response.aiter_bytes():
                    size += len(part)
                    if size > MAX_MANIFEST_SIZE:
                        raise RegistryError(f"{what}: manifest is too big")
                    parts.append(part)
        return b"".join(parts), declared

    @contextlib.asynccontextmanager
    async def blob(self, ref: Reference, digest: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``async with client.blob(ref, digest) as chunks:`` the blob's bytes
        as they arrive (not verified here: the content store's writer does)."""
        what = f"get blob {digest} of {ref.name}"
        async with self._open(ref, f"blobs/{digest}", what) as response:

            async def chunks() -> AsyncGenerator[bytes]:
                with _map_http_errors(what):
                    async for part in response.aiter_bytes():
                        yield part

            async with contextlib.aclosing(chunks()) as stream:
                yield stream

    @contextlib.asynccontextmanager
    async def _open(
        self, ref: Reference, path: str, what: str, *, accept: str | None = None
    ) -> AsyncIterator[httpx.Response]:
        host = ref.registry_host
        url = f"{self.base_url(host)}/v2/{ref.path}/{path}"
        scope = f"repository:{ref.path}:pull"
        headers = {"Accept": accept} if accept else {}
        authorization = await self._authorization(host, scope, what, fresh=False)
        response = await self._follow(url, host, headers, authorization, what)
        try:
            if response.status_code == 401:
                header = response.headers.get("www-authenticate", "")
                await response.aclose()
                challenge = parse_challenge(header)
                if challenge is None:
                    raise RegistryAuthError(f"{what}: {host} refused us (401) without a challenge")
                self._challenges[host] = challenge
                authorization = await self._authorization(host, scope, what, fresh=True)
                response = await self._follow(url, host, headers, authorization, what)
                if response.status_code == 401:
                    raise RegistryAuthError(f"{what}: {host} refused our credentials (401)")
            if response.status_code == 403:
                raise RegistryAuthError(f"{what}: {host} denied access (403)")
            if response.status_code >= 300:
                raise RegistryError(
                    f"{what}: {host} answered {response.status_code}"
                    f"{await _error_detail(response, what)}",
                    response.status_code,
                )
            yield response
        finally:
            await response.aclose()

    async def _follow(
        self, url: str, host: str, headers: dict[str, str], authorization: str | None, what: str
    ) -> httpx.Response:
        origin = httpx.URL(url)
        target = origin
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            # The registry's credentials are for the registry: a redirect to a
            # storage host (a CDN, S3) must not see them.
            if authorization and (target.scheme, target.netloc) == (origin.scheme, origin.netloc):
                sent["Authorization"] = authorization
            request = self._http.build_request("GET", target, headers=sent)
            with _map_http_errors(what):
                response = await self._http.send(request, stream=True)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            await response.aclose()
            target = target.join(location)
            if target.scheme not in ("http", "https"):
                raise RegistryError(f"{what}: redirected to a {target.scheme!r} URL")
        raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects from {host}")

    async def _authorization(self, host: str, scope: str, what: str, *, fresh: bool) -> str | None:
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        credentials = self.credentials.get(host)
        if challenge.scheme == "basic":
            if credentials is None:
                if fresh:
                    raise RegistryAuthError(f"{what}: {host} wants credentials (log in first)")
                return None
            return credentials.basic()
        if challenge.scheme != "bearer":
            raise RegistryAuthError(f"{what}: {host} wants unsupported auth {challenge.scheme!r}")
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        key = (realm, service, scope)
        cached = self._tokens.get(key)
        if cached is not None and not fresh and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        token, ttl = await self._fetch_token(realm, service, scope, credentials, what)
        self._tokens[key] = (token, time.monotonic() + max(ttl - TOKEN_MARGIN, 0.0))
        return f"Bearer {token}"

    async def _fetch_token(
        self, realm: str, service: str, scope: str, credentials: object, what: str
    ) -> tuple[str, float]:
        if not realm.startswith(("https://", "http://")):
            raise RegistryAuthError(f"{what}: token realm {realm!r} is not an http(s) URL")
        params = {"scope": scope, **({"service": service} if service else {})}
        headers = {}
        basic = getattr(credentials, "basic", None)
        if callable(basic):
            headers["Authorization"] = str(basic())
        with _map_http_errors(f"{what}: get a token from {realm}"):
            response = await self._http.get(realm, params=params, headers=headers)
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"{what}: token server {realm} refused us ({response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryAuthError(f"{what}: token server {realm} answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise RegistryAuthError(f"{what}: token server {realm} sent no JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"{what}: token server {realm} sent no token")
        ttl = body.get("expires_in")
        return token, float(ttl) if isinstance(ttl, int | float) and ttl > 0 else DEFAULT_TOKEN_TTL


async def _error_detail(response: httpx.Response, what: str) -> str:
    """The registry's error codes and messages (``MANIFEST_UNKNOWN: ...``), if any."""
    try:
        with _map_http_errors(what):
            body = b""
            async for part in response.aiter_bytes():
                body += part
                if len(body) > ERROR_BODY_LIMIT:
                    break
        import json

        errors = json.loads(body).get("errors") or []
        shown = [f"{e.get('code', '')}: {e.get('message', '')}" for e in errors[:3]]
    except (ValueError, AttributeError, RegistryError):
        return ""
    return f" ({one_line('; '.join(shown))})" if shown else ""
