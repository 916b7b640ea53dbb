"""JWT bearer tokens: HS256 with a shared secret, or RS256/ES256 keys from a JWKS URL.

Signature, `exp`, `nbf` (with leeway), `iss` (when configured) and `aud` (required when
configured) are checked. The role comes from the claim `toolgate_role` (default client), the
scope from `toolgate_servers` / `toolgate_tools` (absent: every tool).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import jwt

from .principal import ROLES, Principal, Scope
from .settings import Settings

logger = logging.getLogger(__name__)

ROLE_CLAIM = "toolgate_role"
SERVERS_CLAIM = "toolgate_servers"
TOOLS_CLAIM = "toolgate_tools"
_ASYMMETRIC = ("RS256", "ES256")
JWKS_TTL_S = 600.0  # keys are refetched this often anyway (rotation)
JWKS_MIN_REFETCH_S = 30.0  # an unknown kid refetches at most this often (a flood of forged kids)


class TokenError(Exception):
    """The token is not acceptable; the message says why (it never holds the token)."""


class KeysUnavailableError(Exception):
    """The JWKS could not be fetched and no keys are cached."""


class JwksCache:
    """Signing keys from a JWKS URL, fetched asynchronously and kept by key id. Refetched when
    older than `JWKS_TTL_S` or when a token names an unknown key, but never more often than
    every `JWKS_MIN_REFETCH_S`: tokens with made-up key ids cannot hammer the issuer."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = -float("inf")  # last success
        self._attempted = -float("inf")  # last try, successful or not
        self._lock = anyio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid`` (or the only key when the token names none)."""
        found = self._pick(kid)
        if found is None or time.monotonic() - self._fetched > JWKS_TTL_S:
            await self._refresh()
            found = self._pick(kid)
        if not self._keys:
            raise KeysUnavailableError("the token signing keys are unavailable")
        if found is None:
            raise TokenError(
                "the token's signing key is not in the JWKS" if kid else "the token names no key id"
            )
        return found

    def _pick(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._attempted < JWKS_MIN_REFETCH_S:
                return  # rate bound; also, another request refreshed while this one waited
            self._attempted = time.monotonic()
            try:
                response = await self._client.get(self._url)
                response.raise_for_status()
                self._keys = _parse_jwks(response.json())
                self._fetched = time.monotonic()
            except (httpx.HTTPError, ValueError) as exc:  # keep the keys we have, if any
                logger.warning("could not fetch the JWKS from %s: %s", self._url, exc)


def _parse_jwks(data: Any) -> dict[str, jwt.PyJWK]:
    """Usable signing keys by kid; keys of other kinds or uses are skipped."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            logger.info("JWKS key %s skipped: %s", entry.get("kid"), exc)
            continue
        keys[str(entry.get("kid") or "")] = key
    return keys


class JwtVerifier:
    """Verifies bearer JWTs against the settings and turns their claims into a Principal."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        # Empty values (`VAR=` in a compose file) mean unset, never "must equal ''".
        self._secret = (
            settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else ""
        ) or None
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._leeway = settings.jwt_leeway_s
        self._jwks: JwksCache | None = None
        if settings.jwt_jwks_url:
            if client is None:
                raise ValueError("a JWKS URL needs an HTTP client")
            self._jwks = JwksCache(settings.jwt_jwks_url, client)

    async def verify(self, token: str) -> Principal:
        """The principal a valid token stands for; TokenError (or KeysUnavailableError) else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("the bearer token is neither an API key nor a JWT") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self._secret is not None:
            key = self._secret
        elif alg in _ASYMMETRIC and self._jwks is not None:
            kid = header.get("kid")
            jwk = await self._jwks.key(kid if isinstance(kid, str) else None)
            if jwk.algorithm_name != alg:  # an EC token naming an RSA key, or the reverse
                raise TokenError(f"the token's algorithm {alg} does not fit its key")
            key = jwk.key
        else:
            raise TokenError(f"tokens signed with {alg!r} are not accepted here")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:  # PyJWT raises TypeError on key misfits
            raise TokenError(f"the token is not valid: {exc}") from None
        return principal_from_claims(claims)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Role and scope from a verified token's claims."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("the token's 'sub' must be a non-empty string")
    role = claims.get(ROLE_CLAIM, "client")
    if role not in ROLES:
        raise TokenError(f"the token's {ROLE_CLAIM!r} must be one of {list(ROLES)}")
    servers, tools = _names(claims, SERVERS_CLAIM), _names(claims, TOOLS_CLAIM)
    scope = None if servers is None and tools is None else Scope(servers or frozenset(), tools or frozenset())
    issuer = claims.get("iss") if isinstance(claims.get("iss"), str) else ""
    return Principal(id=f"jwt:{issuer}/{sub}", role=role, scope=scope, kind="jwt")


def _names(claims: Mapping[str, Any], claim: str) -> frozenset[str] | None:
    value = claims.get(claim)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"the token's {claim!r} must be a list of names")
    return frozenset(value)
