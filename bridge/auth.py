"""Bearer-token verification: the checklist of shared/notes/bridge-jobs-security.md §1, in order.

Tokens are HS256 JWTs minted per call by the Dify plugin with the secret of its API key
(bridge/keys.py). Everything in the header is untrusted until the signature checks out, so the
header is only used to pick the key (dictionary lookup) and to refuse what we never accept.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import redis

from bridge.keys import KEY_PREFIX, KID_RE, KeyStore, parse_api_key
from bridge.settings import BridgeSettings

TOKEN_TYPE = "th+jwt"
"""Explicit JWT type (RFC 8725 §3.11): our tokens can't be confused with other JWTs signed elsewhere."""
ALGORITHMS = ["HS256"]
"""Fixed allow-list, never taken from the token; HS and RS/ES are never mixed (RFC 8725 §3.1)."""
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
SCOPES = frozenset({"jobs:write", "jobs:read", "avatars:write"})
"""Scopes the bridge knows about; tokens carry them space-separated in the ``scope`` claim (RFC 8693 §4.2)."""
MAX_TOKEN_CHARS = 4096
MAX_JTI_CHARS = 128
MAX_SUB_CHARS = 255
_ALLOWED_HEADERS = frozenset({"alg", "typ", "kid"})
API_KEY_SENT = (
    "the credential sent is an API key (thk_…), not a token: the key stays with you and signs a short-lived, "
    "single-use token for each request. Mint one with `python -m bridge token` and send 'Authorization: Bearer "
    "<token>' (bridge/README.md shows it with curl). If this request crossed a network you do not trust, revoke "
    "the key (python -m bridge keys revoke <kid>) and create another"
)
"""What a caller who sent the API key itself is told (never the key): the token step is what they are missing."""


def looks_like_api_key(credential: str) -> bool:
    """Whether a bearer credential is a raw ``thk_<kid>_<secret>`` key rather than a token (a JWT never starts so)."""
    return credential.startswith(f"{KEY_PREFIX}_")


class AuthError(Exception):
    """A token was refused. ``str(exc)`` is a human reason safe to return (it never quotes the token)."""

    def __init__(self, reason: str, code: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ReplayStoreUnavailable(RuntimeError):
    """The replay store could not be asked; the request should fail with 503, not 401."""


class ReplayStore(Protocol):
    def claim(self, jti: str, expires_at: int) -> bool:
        """Record ``jti`` until ``expires_at`` (epoch s). False when it was already recorded (a replay)."""
        ...


class RedisReplayStore:
    """``SET jti:<jti> 1 NX EXAT <expiry>``: atomic, and forgotten once the token could no longer pass anyway."""

    def __init__(self, redis_url: str, timeout_s: float = 2.0) -> None:
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)

    def claim(self, jti: str, expires_at: int) -> bool:
        try:
            return bool(self._redis.set(f"jti:{jti}", 1, nx=True, exat=expires_at))
        except redis.RedisError as exc:
            raise ReplayStoreUnavailable(f"replay store unavailable ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class Claims:
    """Who is calling, as established by a verified token."""

    sub: str
    kid: str
    scopes: frozenset[str]
    admin: bool
    jti: str
    issued_at: int
    expires_at: int

    def has_scopes(self, required: Iterable[str]) -> bool:
        return set(required) <= self.scopes


def verify_token(token: str, keys: KeyStore, settings: BridgeSettings, replay_store: ReplayStore) -> Claims:
    """Verify a bearer token or raise AuthError saying what was wrong.

    The jti is recorded last, so a token refused for any other reason doesn't burn its jti.
    Raises ReplayStoreUnavailable when Redis can't be reached.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise AuthError("token is empty or too long")
    if looks_like_api_key(token):
        raise AuthError(API_KEY_SENT, "api_key_not_token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError("token is not a well-formed JWT") from None

    if header.get("typ") != TOKEN_TYPE:
        raise AuthError(f"token type (typ header) must be '{TOKEN_TYPE}'")
    if header.get("alg") not in ALGORITHMS:
        raise AuthError(f"signing algorithm not allowed; only {', '.join(ALGORITHMS)} is accepted")
    if set(header) - _ALLOWED_HEADERS:
        raise AuthError("token header has unsupported parameters; only alg, typ and kid are allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise AuthError("token header has no valid kid (key id)")
    secret = keys.secret_for(kid)
    if secret is None:
        info = keys.get(kid)
        if info is not None and info.revoked:
            raise AuthError(f"API key {kid} has been revoked", "revoked_key")
        raise AuthError(f"unknown API key {kid}", "unknown_key")

    payload = _decode(token, secret, settings)

    expires_at, issued_at = int(payload["exp"]), int(payload["iat"])
    lifetime = expires_at - issued_at
    if lifetime > settings.jwt_max_lifetime_s:
        raise AuthError(f"token lifetime {lifetime} s exceeds the {settings.jwt_max_lifetime_s} s maximum")
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise AuthError("scope claim must be a space-separated string")
    jti = payload["jti"]
    if not jti or len(jti) > MAX_JTI_CHARS:
        raise AuthError(f"jti claim must be 1 to {MAX_JTI_CHARS} characters")
    check_sub(payload["sub"])

    if not replay_store.claim(jti, expires_at + settings.jwt_leeway_s):
        raise AuthError("token replayed: its jti has already been used", "replayed")
    return Claims(
        sub=payload["sub"],
        kid=kid,
        scopes=frozenset(scope.split()),
        admin=kid in settings.admin_kids or _is_admin(keys, kid),
        jti=jti,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def check_sub(sub: object) -> str:
    """``sub`` names the end user within the key's tenant: 1-255 printable characters, so it can be stored,
    logged and compared as is (a NUL or a control character would be refused by the database, or forge log lines).
    """
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUB_CHARS:
        raise AuthError(f"sub claim must be a string of 1 to {MAX_SUB_CHARS} characters", "invalid_sub")
    if not sub.strip():
        raise AuthError("sub claim must not be only spaces", "invalid_sub")
    if not sub.isprintable():
        raise AuthError("sub claim must contain only printable characters (no NUL, control or line-break "
                        "characters)", "invalid_sub")
    return sub


def _is_admin(keys: KeyStore, kid: str) -> bool:
    info = keys.get(kid)
    return info is not None and info.admin


def _decode(token: str, secret: bytes, settings: BridgeSettings) -> dict[str, Any]:
    """PyJWT with every check switched on, its exceptions turned into reasons a client can act on."""
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_s,
            options={"require": REQUIRED_CLAIMS, "enforce_minimum_key_length": True, "strict_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token has expired", "expired") from None
    except jwt.ImmatureSignatureError as exc:
        claim = "iat" if "iat" in str(exc) else "nbf"
        raise AuthError(f"token is not yet valid ({claim} is in the future)", "not_yet_valid") from None
    except jwt.InvalidAudienceError:
        raise AuthError(f"wrong audience: expected '{settings.jwt_audience}'") from None
    except jwt.InvalidIssuerError:
        raise AuthError(f"wrong issuer: expected '{settings.jwt_issuer}'") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token is missing the required '{exc.claim}' claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad signature: the token was not signed with this API key's secret") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"signing algorithm not allowed; only {', '.join(ALGORITHMS)} is accepted") from None
    except jwt.InvalidKeyError:
        raise AuthError("the API key's secret is too short for HS256") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token ({type(exc).__name__})") from None


def mint_token(
    api_key: str,
    sub: str,
    scopes: Iterable[str],
    audience: str,
    issuer: str,
    lifetime_s: int = 120,
    *,
    now: int | None = None,
) -> str:
    """Mint a per-call token the way the plugin does: HS256, typ th+jwt, kid header, fresh jti."""
    kid, secret = parse_api_key(api_key)
    if isinstance(scopes, str):
        scopes = scopes.split()
    issued = int(time.time()) if now is None else now
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime_s,
        "jti": secrets.token_urlsafe(16),
        "scope": " ".join(scopes),
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid, "typ": TOKEN_TYPE})
