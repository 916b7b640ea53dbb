"""Auth in process: API keys (admin API, hashed storage, revocation, expiry), the bootstrap
admin key, JWT bearer tokens (HS256, and RS256/ES256 from a JWKS served over real HTTP),
roles, and the 401/403 answers. Keys run on SQLite and PostgreSQL (`database_url`)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import select, update

from gateway.app import create_app
from gateway.settings import Settings
from registry.models import ApiKey, utcnow
from tests.support import free_port

pytestmark = pytest.mark.anyio

ADMIN_KEY = "tg_bootstrap_" + uuid.uuid4().hex
SECRET = "hs256-shared-secret-" + uuid.uuid4().hex
ISSUER = "https://issuer.example"
AUDIENCE = "toolgate-test"
MCP_PROBE = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **extra}
    return {k: v for k, v in body.items() if v is not None}


def hs256(secret: str = SECRET, **extra: Any) -> str:
    return jwt.encode(claims(**extra), secret, algorithm="HS256")


class Gateway:
    def __init__(self, http: httpx.AsyncClient, app: Any) -> None:
        self.http = http
        self.app = app

    async def create_key(self, **body: Any) -> dict[str, Any]:
        response = await self.http.post("/admin/keys", json=body, headers=bearer(ADMIN_KEY))
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def status(self, path: str, token: str | None) -> int:
        headers = bearer(token) if token else {}
        return (await self.http.get(path, headers=headers)).status_code

    async def mcp(self, token: str | None) -> httpx.Response:
        """A POST to /mcp: anything but 401/403 means auth let it through."""
        headers = {"Accept": "application/json, text/event-stream", **(bearer(token) if token else {})}
        return await self.http.post("/mcp", json=MCP_PROBE, headers=headers)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
            yield Gateway(http, app)


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "sync_interval_s": 0,
        "intent_parser": "off",
        "admin_key": ADMIN_KEY,
        "jwt_secret": SECRET,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
    }
    return Settings(**{**base, **extra})


async def test_api_keys_roles_and_refusals(tmp_path: Path, database_url: str) -> None:
    async with running(settings_for(tmp_path, database_url=database_url)) as gw:
        # Health is open; everything else needs credentials.
        assert await gw.status("/healthz", None) == 200
        assert await gw.status("/readyz", None) == 200
        refused = await gw.http.get("/admin/servers")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "authentication required" in refused.json()["detail"]
        mcp_refused = await gw.mcp(None)
        assert mcp_refused.status_code == 401
        assert mcp_refused.json()["error"]["code"] == -32001  # JSON-RPC shaped for MCP clients
        for path in ("/openapi.json", "/docs", "/metrics", "/admin/keys", "/no/such/route"):
            assert await gw.status(path, None) == 401, path

        # The bootstrap admin key reaches everything.
        assert await gw.status("/admin/servers", ADMIN_KEY) == 200
        assert await gw.status("/openapi.json", ADMIN_KEY) == 200
        assert (await gw.mcp(ADMIN_KEY)).status_code not in (401, 403)

        # A client key: /mcp only.
        created = await gw.create_key(name="ci bot", role="client", servers=["echo"])
        client_key = created["key"]
        assert client_key.startswith("tg_")
        assert len(client_key) == 46
        assert created["prefix"] == client_key[:10]
        assert created["scope"] == {"servers": ["echo"], "tools": []}
        assert (await gw.mcp(client_key)).status_code not in (401, 403)
        for path in ("/admin/servers", "/admin/keys", "/metrics", "/openapi.json", "/docs"):
            forbidden = await gw.http.get(path, headers=bearer(client_key))
            assert forbidden.status_code == 403, path
            assert "may use /mcp only" in forbidden.json()["detail"]

        # An admin key made through the API works like the bootstrap one.
        admin = await gw.create_key(name="ops", role="admin")
        assert await gw.status("/admin/servers", admin["key"]) == 200

        # Stored hashed; never listed or shown again.
        listed = await gw.http.get("/admin/keys", headers=bearer(ADMIN_KEY))
        one = await gw.http.get(f"/admin/keys/{created['id']}", headers=bearer(ADMIN_KEY))
        assert one.status_code == 200
        assert one.json()["name"] == "ci bot"
        for text in (listed.text, one.text):
            assert client_key not in text
            assert admin["key"] not in text
            assert client_key[10:20] not in text
        assert [k["id"] for k in listed.json()] == [created["id"], admin["id"]]
        async with gw.app.state.service.registry.session() as session:
            rows = (await session.scalars(select(ApiKey))).all()
        assert all(client_key not in (r.key_hash, r.prefix) for r in rows)
        assert {r.last_used_at is not None for r in rows if r.id == created["id"]} == {True}

        # Unknown, malformed and wrong-scheme credentials.
        fake = "tg_" + "A" * 43
        for header in (f"Bearer {fake}", "Bearer tg_short", f"Basic {client_key}", "Bearer", "Bearer  "):
            response = await gw.http.get("/admin/servers", headers={"Authorization": header})
            assert response.status_code == 401, header
        assert (await gw.mcp(fake)).status_code == 401

        # Revocation takes effect at once on this replica (the cache is dropped).
        revoked = await gw.http.delete(f"/admin/keys/{created['id']}", headers=bearer(ADMIN_KEY))
        assert revoked.status_code == 200
        assert revoked.json()["active"] is False
        assert revoked.json()["revoked_at"] is not None
        assert (await gw.mcp(client_key)).status_code == 401
        again = await gw.http.delete(f"/admin/keys/{created['id']}", headers=bearer(ADMIN_KEY))
        assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
        assert (await gw.http.delete("/admin/keys/9999", headers=bearer(ADMIN_KEY))).status_code == 404

        # An expired key is refused (expiry moved into the past in the database).
        expiring = await gw.create_key(name="short", role="client", expires_in_days=1)
        async with gw.app.state.service.registry.session() as session, session.begin():
            past = utcnow() - timedelta(seconds=1)
            await session.execute(update(ApiKey).where(ApiKey.id == expiring["id"]).values(expires_at=past))
        assert (await gw.mcp(expiring["key"])).status_code == 401
        shown = (await gw.http.get(f"/admin/keys/{expiring['id']}", headers=bearer(ADMIN_KEY))).json()
        assert shown["active"] is False

        # Bad key requests are refused with the reason.
        bad = await gw.http.post(
            "/admin/keys", json={"name": "x", "servers": [], "tools": []}, headers=bearer(ADMIN_KEY)
        )
        assert bad.status_code == 422
        assert (
            await gw.http.post("/admin/keys", json={"name": "x", "role": "root"}, headers=bearer(ADMIN_KEY))
        ).status_code == 422


async def test_hs256_tokens(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path)) as gw:
        assert (await gw.mcp(hs256())).status_code not in (401, 403)
        assert await gw.status("/admin/servers", hs256()) == 403  # default role: client
        assert await gw.status("/admin/servers", hs256(toolgate_role="admin")) == 200
        scoped = hs256(toolgate_servers=["time"], toolgate_tools=["echo__echo"])
        assert (await gw.mcp(scoped)).status_code not in (401, 403)

        now = int(time.time())
        refused = {
            "expired": hs256(exp=now - 120, iat=now - 600),
            "not yet valid": hs256(nbf=now + 600),
            "wrong audience": hs256(aud="someone-else"),
            "no audience": hs256(aud=None),
            "wrong issuer": hs256(iss="https://evil.example"),
            "no expiry": hs256(exp=None),
            "no subject": hs256(sub=None),
            "bad signature": hs256(secret="another-secret-of-sufficient-length"),
            "bad role": hs256(toolgate_role="root"),
            "bad scope claim": hs256(toolgate_servers="time"),
            "unsigned": jwt.encode(claims(), None, algorithm="none"),  # type: ignore[arg-type]
            "garbage": "not-a-token",
        }
        for case, token in refused.items():
            response = await gw.mcp(token)
            assert response.status_code == 401, case
            assert 'error="invalid_token"' in response.headers["www-authenticate"], case
        expired = await gw.http.get("/admin/servers", headers=bearer(refused["expired"]))
        assert "expired" in expired.json()["detail"]
        # RFC 9728: where to get a token, linked from the 401 and open to everyone.
        challenge = (await gw.mcp(None)).headers["www-authenticate"]
        metadata_url = "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
        assert f'resource_metadata="{metadata_url}"' in challenge
        metadata = (await gw.http.get(metadata_url)).json()
        assert metadata["resource"] == "http://127.0.0.1:8080/mcp"
        assert metadata["authorization_servers"] == [ISSUER]
        # Within the leeway (30 s) a just-expired token still works.
        assert (await gw.mcp(hs256(exp=now - 5))).status_code not in (401, 403)


class _Jwks:
    """A real HTTP server serving a JWKS document, counting fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _public_jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


@pytest.fixture
def signing_keys() -> Iterator[tuple[_Jwks, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    server = _Jwks({"keys": [_public_jwk(rsa_key, "rsa-1"), _public_jwk(ec_key, "ec-1")]})
    yield server, rsa_key, ec_key
    server.close()


async def test_jwks_tokens(
    tmp_path: Path, signing_keys: tuple[_Jwks, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
) -> None:
    jwks, rsa_key, ec_key = signing_keys
    settings = settings_for(tmp_path, jwt_secret=None, jwt_jwks_url=jwks.url)
    async with running(settings) as gw:
        rs256 = jwt.encode(
            claims(toolgate_role="admin"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}
        )
        es256 = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
        assert await gw.status("/admin/servers", rs256) == 200
        assert (await gw.mcp(es256)).status_code not in (401, 403)
        assert await gw.status("/admin/servers", es256) == 403
        assert jwks.fetches == 1  # keys are cached

        impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        refused = {
            "forged with the right kid": jwt.encode(
                claims(), impostor, algorithm="RS256", headers={"kid": "rsa-1"}
            ),
            "unknown kid": jwt.encode(claims(), impostor, algorithm="RS256", headers={"kid": "rsa-9"}),
            "expired": jwt.encode(
                claims(exp=now - 120), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}
            ),
            "wrong audience": jwt.encode(
                claims(aud="other"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}
            ),
            # Only JWKS keys are configured: an HS256 token has no key to be checked against.
            "hs256 without a secret": hs256(secret="x" * 40),
            "kid of another key type": jwt.encode(
                claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"}
            ),
        }
        for case, token in refused.items():
            assert (await gw.mcp(token)).status_code == 401, case
        # An unknown kid right after a fetch does not refetch (bounded: forged kids cannot flood it).
        assert jwks.fetches == 1


async def test_auth_off_lets_loopback_in_as_admin(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", sync_interval_s=0, intent_parser="off", auth="off")
    async with running(settings) as gw:
        assert await gw.status("/admin/servers", None) == 200
        assert (await gw.mcp(None)).status_code not in (401, 403)
        # Keys can still be managed (for the day auth is turned on).
        created = await gw.http.post("/admin/keys", json={"name": "later"})
        assert created.status_code == 201


async def test_jwks_rotation_and_outage(
    tmp_path: Path,
    signing_keys: tuple[_Jwks, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jwks, rsa_key, _ = signing_keys
    monkeypatch.setattr("gateway.jwt_auth.JWKS_MIN_REFETCH_S", 0.0)  # let a rotation be seen at once
    async with running(settings_for(tmp_path, jwt_secret=None, jwt_jwks_url=jwks.url)) as gw:
        first = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
        assert (await gw.mcp(first)).status_code not in (401, 403)
        rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks.document = {"keys": [_public_jwk(rotated, "rsa-2")]}
        second = jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "rsa-2"})
        assert (await gw.mcp(second)).status_code not in (401, 403)  # unknown kid: refetched
        assert jwks.fetches == 2

    # The issuer's JWKS unreachable: tokens get 503 (not "invalid"), API keys keep working.
    dead = settings_for(tmp_path, jwt_secret=None, jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks")
    async with running(dead) as gw:
        token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
        assert (await gw.mcp(token)).status_code == 503
        assert await gw.status("/admin/servers", ADMIN_KEY) == 200


async def test_empty_settings_mean_unset(tmp_path: Path) -> None:
    """`TOOLGATE_JWT_AUDIENCE=` (as a compose file passes an unset variable) checks nothing,
    rather than requiring an empty audience; an empty admin key admits nobody."""
    from gateway.auth import Authenticator, AuthError
    from gateway.jwt_auth import JwtVerifier
    from registry.keys import KeyStore

    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, jwt_issuer="", jwt_audience="", admin_key="")
    principal = await JwtVerifier(settings).verify(hs256(aud="anything", iss="https://any.example"))
    assert principal.id == "jwt:https://any.example/alice"
    authenticator = Authenticator(settings, KeyStore(lambda: None))  # type: ignore[arg-type, return-value]
    with pytest.raises(AuthError):
        await authenticator.authenticate("Bearer ")
    with pytest.raises(AuthError):
        await authenticator.authenticate("Bearer not-the-admin-key")
