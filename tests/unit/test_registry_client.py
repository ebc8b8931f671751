"""The registry client's auth and redirects, against httpx.MockTransport servers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from supervisor.errors import RegistryAuthError, RegistryError
from supervisor.images import (
    Credentials,
    CredentialStore,
    RegistryClient,
    is_loopback,
    parse_reference,
    save_credentials,
)
from supervisor.images._auth import parse_challenge

pytestmark = pytest.mark.anyio

MANIFEST = b'{"schemaVersion":2}'
REALM = "https://auth.example.com/token"
CHALLENGE = f'Bearer realm="{REALM}",service="registry.example.com",scope="repository:x:pull"'
Handler = Callable[[httpx.Request], httpx.Response]


class FakeRegistry:
    """A registry that wants a bearer token, and its token server."""

    def __init__(self, *, expires_in: int | None = 300, token_key: str = "token") -> None:
        self.token_requests: list[httpx.Request] = []
        self.registry_requests: list[httpx.Request] = []
        self.expires_in = expires_in
        self.token_key = token_key
        self.issued = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            self.token_requests.append(request)
            self.issued += 1
            body: dict[str, object] = {self.token_key: f"tok{self.issued}"}
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            return httpx.Response(200, json=body)
        self.registry_requests.append(request)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer tok"):
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        if "/blobs/" in request.url.path:
            return httpx.Response(307, headers={"Location": "https://cdn.example.net/b?sig=1"})
        return httpx.Response(
            200, content=MANIFEST,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )  # fmt: skip


def client_for(handler: Handler, **kwargs: object) -> RegistryClient:
    return RegistryClient(
        transport=httpx.MockTransport(handler),
        credentials=kwargs.pop("credentials", CredentialStore()),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


async def test_anonymous_token_flow_and_cache_per_scope() -> None:
    fake = FakeRegistry()
    async with client_for(fake.handle) as client:
        ref = parse_reference("registry.example.com/x/app:1")
        data, media_type = await client.manifest(ref)
        assert (data, media_type) == (MANIFEST, "application/vnd.oci.image.manifest.v1+json")
        # 401, then the token, then the retry with it.
        assert [r.headers.get("authorization") for r in fake.registry_requests] == [
            None, "Bearer tok1"
        ]  # fmt: skip
        token = fake.token_requests[0]
        assert token.url.params["service"] == "registry.example.com"
        assert token.url.params["scope"] == "repository:x/app:pull"
        assert "authorization" not in token.headers
        accept = fake.registry_requests[0].headers["accept"]
        for media in ("oci.image.index", "oci.image.manifest", "manifest.list.v2", "manifest.v2"):
            assert media in accept
        # Same scope: the cached token, no 401 and no new token.
        await client.manifest(ref, "2")
        assert len(fake.token_requests) == 1
        assert fake.registry_requests[-1].headers["authorization"] == "Bearer tok1"
        # Another repository is another scope: a token of its own, without a 401 first.
        await client.manifest(parse_reference("registry.example.com/y/other:1"))
        assert len(fake.token_requests) == 2
        assert fake.token_requests[1].url.params["scope"] == "repository:y/other:pull"
        assert fake.registry_requests[-1].headers["authorization"] == "Bearer tok2"
        assert len(fake.registry_requests) == 4


async def test_expired_token_is_fetched_again() -> None:
    fake = FakeRegistry(expires_in=1, token_key="access_token")
    async with client_for(fake.handle) as client:
        ref = parse_reference("registry.example.com/x/app:1")
        await client.manifest(ref)
        await client.manifest(ref)
    # expires_in 1 s is within the renewal margin: each call asks again.
    assert len(fake.token_requests) == 2


async def test_basic_credentials_from_docker_config_go_to_the_token_server(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:s3cret").decode()
    config.write_text(json.dumps({"auths": {"https://registry.example.com": {"auth": auth}}}))
    fake = FakeRegistry()
    credentials = CredentialStore.load(config)
    async with client_for(fake.handle, credentials=credentials) as client:
        await client.manifest(parse_reference("registry.example.com/x/app:1"))
    assert fake.token_requests[0].headers["authorization"] == f"Basic {auth}"


async def test_redirect_to_another_host_drops_authorization() -> None:
    fake = FakeRegistry()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example.net":
            seen.append(request)
            return httpx.Response(200, content=b"blob bytes")
        return fake.handle(request)

    async with client_for(handler) as client:
        ref = parse_reference("registry.example.com/x/app:1")
        async with client.blob(ref, "sha256:" + "0" * 64) as chunks:
            data = b"".join([c async for c in chunks])
    assert data == b"blob bytes"
    assert fake.registry_requests[-1].headers["authorization"] == "Bearer tok1"
    assert [r.url.params["sig"] for r in seen] == ["1"]
    assert "authorization" not in seen[0].headers


async def test_redirect_loop_is_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": str(request.url)})

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="redirects"):
            await client.manifest(parse_reference("registry.example.com/x/app:1"))


async def test_basic_challenge() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == Credentials("bob", "pw").basic():
            return httpx.Response(200, content=MANIFEST)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="Registry"'})

    ref = parse_reference("registry.example.com/x/app:1")
    async with client_for(handler) as client:
        with pytest.raises(RegistryAuthError, match="wants credentials"):
            await client.manifest(ref)
    store = CredentialStore({"registry.example.com": Credentials("bob", "pw")})
    async with client_for(handler, credentials=store) as client:
        assert (await client.manifest(ref))[0] == MANIFEST


async def test_refused_token_and_refused_credentials() -> None:
    def no_token(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return httpx.Response(401)
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})

    def always_401(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return httpx.Response(200, json={"token": "t"})
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})

    ref = parse_reference("registry.example.com/x/app:1")
    async with client_for(no_token) as client:
        with pytest.raises(RegistryAuthError, match="refused us"):
            await client.manifest(ref)
    async with client_for(always_401) as client:
        with pytest.raises(RegistryAuthError, match="refused our credentials"):
            await client.manifest(ref)


async def test_registry_errors_carry_status_and_codes() -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=body)

    async with client_for(handler) as client:
        with pytest.raises(RegistryError) as caught:
            await client.manifest(parse_reference("registry.example.com/x/app:1"))
    assert caught.value.status == 404
    assert "MANIFEST_UNKNOWN: manifest unknown" in str(caught.value)


async def test_connection_errors_are_registry_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="refused"):
            await client.manifest(parse_reference("registry.example.com/x/app:1"))


def test_plain_http_only_for_loopback_and_insecure() -> None:
    client = RegistryClient(credentials=CredentialStore(), insecure=["my.lan:5000", "other"])
    assert client.base_url("registry-1.docker.io") == "https://registry-1.docker.io"
    assert client.base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert client.base_url("localhost:5000") == "http://localhost:5000"
    assert client.base_url("[::1]:5000") == "http://[::1]:5000"
    assert client.base_url("my.lan:5000") == "http://my.lan:5000"
    assert client.base_url("my.lan:5001") == "https://my.lan:5001"
    assert client.base_url("other:443") == "http://other:443"
    assert [is_loopback(h) for h in ("127.1.2.3", "10.0.0.1", "::1", "localhost.evil")] == [
        True, False, True, False
    ]  # fmt: skip


def test_docker_hub_credentials_and_login_file(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    save_credentials("docker.io", Credentials("me", "pw:with:colons"), path)
    save_credentials("127.0.0.1:5000", Credentials("u", "p"), path)
    assert path.stat().st_mode & 0o777 == 0o600
    store = CredentialStore.load(path)
    for host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        assert store.get(host) == Credentials("me", "pw:with:colons")
    assert store.get("127.0.0.1:5000") == Credentials("u", "p")
    assert store.get("quay.io") is None
    assert "https://index.docker.io/v1/" in json.loads(path.read_text())["auths"]
    assert CredentialStore.load(tmp_path / "missing.json").get("docker.io") is None


def test_challenge_parsing() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push",error=x'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {
        "realm": "https://a/token", "service": "reg", "scope": "repository:x:pull,push",
        "error": "x",
    }  # fmt: skip
    assert parse_challenge("") is None
