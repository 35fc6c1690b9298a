"""Per-request plumbing: the app's shared state and the bearer-token guard for protected views."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from celery import Celery
from flask import current_app, g, request

from bridge.auth import (
    API_KEY_SENT,
    SCOPES,
    AuthError,
    Claims,
    ReplayStore,
    ReplayStoreUnavailable,
    looks_like_api_key,
    verify_token,
)
from bridge.db import Database, Owner
from bridge.keys import KeyFileError, KeyStore
from bridge.links import LinkMinter, LinkSigner
from bridge.objectstore import ObjectStore
from bridge.problems import INSUFFICIENT_SCOPE, INVALID_TOKEN, UNAVAILABLE, problem
from bridge.settings import BridgeSettings
from bridge.storage import Storage
from engine import EngineSettings

SECURITY_SCHEME = "BearerAuth"
"""Name of the OpenAPI security scheme; protected views declare ``@bp.doc(security=SECURITY_SCHEME)``."""
RETRY_AFTER_S = "5"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class BridgeState:
    """What every request may need, built once by ``create_app``."""

    settings: BridgeSettings
    keys: KeyStore
    replay_store: ReplayStore
    redis: redis.Redis
    db: Database
    storage: Storage
    links: LinkMinter
    """Mints the links GET /v1/jobs/{id} returns (local or S3, per ``link_backend``)."""
    file_signer: LinkSigner
    """Verifies the bridge's own /files links."""
    object_store: ObjectStore | None
    celery: Celery
    engine_settings: EngineSettings


def state() -> BridgeState:
    return cast(BridgeState, current_app.extensions["bridge"])


def current_claims() -> Claims:
    """The verified caller of a ``require_token`` view."""
    return cast(Claims, g.claims)


def current_owner() -> Owner:
    """Whose jobs the caller may see: its API key plus its ``sub`` (a sub alone can be minted by any key)."""
    claims = current_claims()
    return Owner(claims.kid, claims.sub)


def _challenge(realm: str, error: str | None = None, scope: str | None = None) -> str:
    """RFC 6750 §3: no error code when no credentials were sent at all."""
    parts = [f'realm="{realm}"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def _bearer_token() -> str | None:
    """The token from ``Authorization: Bearer <token>``; None when the header is absent.

    Raises AuthError for a header that is present but not a single bearer token.
    """
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if any(looks_like_api_key(word) for word in header.split()):  # "Authorization: thk_…", "Token thk_…"
        raise AuthError(API_KEY_SENT, "api_key_not_token")
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
    return token


def require_token(*scopes: str) -> Callable[[F], F]:
    """Guard a view: 401 problem+json unless a valid bearer token is sent, 403 without ``scopes``."""
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; known: {sorted(SCOPES)}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            st = state()
            realm = st.settings.jwt_audience
            try:
                token = _bearer_token()
                if token is None:
                    return problem(
                        401, None, "missing bearer token: send 'Authorization: Bearer <token>' (python -m bridge "
                        "token mints one from your API key)", INVALID_TOKEN,
                        headers={"WWW-Authenticate": _challenge(realm)}, code="missing_token",
                    )
                claims = verify_token(token, st.keys, st.settings, st.replay_store)
            except AuthError as exc:
                current_app.logger.info("token refused: %s", exc.reason)
                return problem(
                    401, None, exc.reason, INVALID_TOKEN,
                    headers={"WWW-Authenticate": _challenge(realm, "invalid_token")}, code=exc.code,
                )
            except (ReplayStoreUnavailable, KeyFileError) as exc:
                current_app.logger.error("cannot verify tokens: %s", exc)
                what = "replay store (Redis)" if isinstance(exc, ReplayStoreUnavailable) else "keys file"
                return problem(
                    503, None, f"cannot verify tokens: the {what} is unavailable", UNAVAILABLE,
                    headers={"Retry-After": RETRY_AFTER_S},
                )
            if not claims.has_scopes(scopes):
                missing = " ".join(sorted(set(scopes) - claims.scopes))
                return problem(
                    403, None, f"token lacks the scope(s): {missing}", INSUFFICIENT_SCOPE,
                    headers={"WWW-Authenticate": _challenge(realm, "insufficient_scope", " ".join(scopes))},
                    code="insufficient_scope",
                )
            g.claims = claims
            return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate
