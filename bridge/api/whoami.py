"""GET /v1/whoami: what the bridge makes of the caller's token (a plugin's connection check)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Boolean, List, String

from bridge.api.deps import SECURITY_SCHEME, current_claims, require_token

bp = APIBlueprint("whoami", __name__, tag="auth")


class WhoAmIOut(Schema):
    sub = String(required=True, metadata={"description": "The token's subject (the Dify tenant or user)."})
    kid = String(required=True, metadata={"description": "The API key that signed the token."})
    scopes = List(String(), required=True, metadata={"example": ["jobs:read", "jobs:write"]})
    admin = Boolean(required=True, metadata={"description": "True when the key is an admin key."})
    expires_at = String(required=True, metadata={"description": "RFC 3339 UTC expiry of the token."})


@bp.get("/v1/whoami")
@bp.output(WhoAmIOut)
@bp.doc(summary="Who am I", security=SECURITY_SCHEME,
        responses={503: "Tokens cannot be verified right now (Redis or the keys file is unavailable)"})
@require_token()
def whoami() -> dict[str, Any]:
    claims = current_claims()
    expires = datetime.fromtimestamp(claims.expires_at, UTC).isoformat().replace("+00:00", "Z")
    return {"sub": claims.sub, "kid": claims.kid, "scopes": sorted(claims.scopes), "admin": claims.admin,
            "expires_at": expires}
