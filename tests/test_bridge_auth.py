"""Bridge increment 1: API keys, JWT verification, problem+json errors, health probes, CLI, OpenAPI.

Everything goes through the Flask test client against ``create_app``, with a real redis-server as
the jti replay store, a temp storage root and a temp keys file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from apiflask import APIFlask, Schema
from apiflask.fields import String
from flask.testing import FlaskClient

from bridge.api.deps import require_token
from bridge.app import create_app
from bridge.auth import TOKEN_TYPE, mint_token
from bridge.keys import KeyFileError, KeyStore, format_api_key, parse_api_key
from bridge.problems import PROBLEM_MEDIA_TYPE
from bridge.settings import BridgeSettings
from tests.bridge_fixtures import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
AUD, ISS = "talking-head-bridge", "talking-head-dify-plugin"
SCOPES = ["jobs:read", "jobs:write"]
# An RSA public key: the classic HS/RS confusion signs HS256 with it as the HMAC secret.
RSA_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvXqCPNf8U75vtebMLtoa
IgeJou75g9SPExyAeMDSWY8dly+TSnj6zWHXMG8mOJcZ2vWT+AjT/J838EXO38Rn
o4OEfAoAwFB8Euh0B8Evnqs9rAv8OEMChq64FrPgIXKEDDTkbhhWSk7kxjbAKloE
xXX4SrTK8Nd4MH0v3JjojwpgPjIh6bx9nlNFwibm1y85FzKBT4xKIbnUf8WFIDp0
YgHZfikfSthbRR9SQ/3XPAMEELFuOOlT09T7JWlOqPEWphTsQm4MM2JFQikjX/Rt
mt9H1zWoicpoHzYVMTor7j+x+cLFKI6226niGCgLWf0Qb2+YjtresYRsJYtsJpDJ
PQIDAQAB
-----END PUBLIC KEY-----
"""


def make_settings(root: Path, redis_url: str, **overrides: Any) -> BridgeSettings:
    values: dict[str, Any] = {"storage_root": root, "redis_url": redis_url, "min_free_bytes": 0, **overrides}
    return BridgeSettings(_env_file=None, **values)


@dataclass
class Bridge:
    """One app under test, with its keys file and one ordinary API key."""

    app: APIFlask
    client: FlaskClient
    settings: BridgeSettings
    keys: KeyStore
    api_key: str

    @property
    def kid(self) -> str:
        return parse_api_key(self.api_key)[0]

    @property
    def secret(self) -> bytes:
        return parse_api_key(self.api_key)[1]

    def token(self, **kwargs: Any) -> str:
        return mint_token(self.api_key, "tenant-42", kwargs.pop("scopes", SCOPES), AUD, ISS, **kwargs)

    def whoami(self, token: str | None = None, authorization: str | None = None) -> Any:
        headers = {"Authorization": authorization or f"Bearer {token}"} if token or authorization else {}
        return self.client.get("/v1/whoami", headers=headers)


@pytest.fixture
def bridge(tmp_path: Path, redis_server: RedisServer) -> Bridge:
    settings = make_settings(tmp_path / "storage", redis_server.url)
    keys = KeyStore(settings.keys_path)
    api_key = keys.create()
    app = create_app(settings)
    return Bridge(app, app.test_client(), settings, keys, api_key)


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "sub": "tenant-42", "iat": now, "nbf": now, "exp": now + 120,
            "jti": secrets.token_urlsafe(12), "scope": "jobs:read"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(bridge: Bridge, header: dict[str, Any] | None = None, key: bytes | None = None, **claim_overrides: Any
          ) -> str:
    """An HS256 token with chosen claims/header (None drops a claim), signed with the bridge key's secret."""
    head = {"alg": "HS256", "typ": TOKEN_TYPE, "kid": bridge.kid, **(header or {})}
    return jwt.encode(claims(**claim_overrides), key or bridge.secret, algorithm="HS256", headers=head)


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """Hand-built JWS, for what PyJWT refuses to produce (alg none, HMAC keyed with a PEM)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def rs256_token(bridge: Bridge) -> str:
    """A genuinely RS256-signed token when `cryptography` is installed, else one with an RS256 header."""
    header = {"alg": "RS256", "typ": TOKEN_TYPE, "kid": bridge.kid}
    try:
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        return f"{b64(header)}.{b64(claims())}.{b64(secrets.token_bytes(256))}"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), private, algorithm="RS256", headers=header)


def flip_signature(token: str) -> str:
    """Change one signature character well inside the segment (the last one may only hold padding bits)."""
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"


def tamper_payload(token: str) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64(claims(sub='someone-else'))}.{sig}"


def assert_problem(response: Any, status: int, detail: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    body = response.get_json(force=True)
    assert body["status"] == status and body["title"] and body["type"]
    assert detail in body["detail"], body
    return body


def assert_invalid_token(response: Any, detail: str, token: str | None = None) -> None:
    body = assert_problem(response, 401, detail)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    if token:
        assert token not in response.get_data(as_text=True)
        for part in token.split("."):
            assert not part or part not in body["detail"]


# --- happy path --------------------------------------------------------------------------------


def test_valid_token_gets_whoami(bridge: Bridge) -> None:
    response = bridge.whoami(bridge.token(lifetime_s=60))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["sub"] == "tenant-42" and body["kid"] == bridge.kid
    assert body["scopes"] == ["jobs:read", "jobs:write"] and body["admin"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])


def test_admin_flag_comes_from_the_key_or_settings(bridge: Bridge, tmp_path: Path, redis_server: RedisServer) -> None:
    admin_key = bridge.keys.create(admin=True)
    token = mint_token(admin_key, "ops", [], AUD, ISS)
    assert bridge.whoami(token).get_json()["admin"] is True
    settings = make_settings(bridge.settings.storage_root, redis_server.url, admin_kids=bridge.kid)
    client = create_app(settings).test_client()
    response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {bridge.token()}"})
    assert response.get_json()["admin"] is True


def test_key_from_environment_setting(tmp_path: Path, redis_server: RedisServer) -> None:
    env_key = format_api_key("0badc0de", secrets.token_bytes(32))
    settings = make_settings(tmp_path, redis_server.url, api_keys=f"{env_key}, ")
    app = create_app(settings)
    token = mint_token(env_key, "env-tenant", ["jobs:read"], AUD, ISS)
    assert app.test_client().get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    KeyStore(settings.keys_path, {"0badc0de": b"x" * 32}).revoke("0badc0de")
    token = mint_token(env_key, "env-tenant", ["jobs:read"], AUD, ISS)
    response = app.test_client().get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert_invalid_token(response, "revoked")


# --- every way a token can be wrong ------------------------------------------------------------

BAD_TOKENS: dict[str, tuple[Callable[[Bridge], str], str]] = {
    "not a JWT": (lambda b: "abc.def", "not a well-formed JWT"),
    "expired": (lambda b: forge(b, iat=int(time.time()) - 200, nbf=int(time.time()) - 200,
                                exp=int(time.time()) - 60), "expired"),
    "not yet valid": (lambda b: forge(b, nbf=int(time.time()) + 120, exp=int(time.time()) + 240),
                      "not yet valid (nbf"),
    "iat in the future": (lambda b: forge(b, iat=int(time.time()) + 120, exp=int(time.time()) + 240),
                          "not yet valid (iat"),
    "wrong audience": (lambda b: forge(b, aud="some-other-api"), "wrong audience"),
    "wrong issuer": (lambda b: forge(b, iss="someone-else"), "wrong issuer"),
    "tampered payload": (lambda b: tamper_payload(b.token()), "bad signature"),
    "tampered signature": (lambda b: flip_signature(b.token()), "bad signature"),
    "signed with another secret": (lambda b: forge(b, key=secrets.token_bytes(32)), "bad signature"),
    "alg none": (lambda b: raw_token({"alg": "none", "typ": TOKEN_TYPE, "kid": b.kid}, claims()),
                 "algorithm not allowed"),
    "RS256 (HS/RS confusion)": (rs256_token, "algorithm not allowed"),
    "HS256 keyed with an RSA public key": (
        lambda b: raw_token({"alg": "HS256", "typ": TOKEN_TYPE, "kid": b.kid}, claims(), RSA_PUBLIC_PEM),
        "bad signature"),
    "unknown kid": (lambda b: forge(b, header={"kid": "0123abcd"}), "unknown API key 0123abcd"),
    "kid that is a path": (lambda b: forge(b, header={"kid": "../keys.json"}), "no valid kid"),
    "lifetime over 300 s": (lambda b: b.token(lifetime_s=301), "lifetime 301 s exceeds the 300 s maximum"),
    "missing jti": (lambda b: forge(b, jti=None), "missing the required 'jti' claim"),
    "missing exp": (lambda b: forge(b, exp=None), "missing the required 'exp' claim"),
    "missing sub": (lambda b: forge(b, sub=None), "missing the required 'sub' claim"),
    "wrong typ": (lambda b: forge(b, header={"typ": "JWT"}), f"typ header) must be '{TOKEN_TYPE}'"),
    "jku header": (lambda b: forge(b, header={"jku": "https://evil.example/jwks"}), "unsupported parameters"),
    "scope not a string": (lambda b: forge(b, scope=["jobs:read"]), "scope claim must be"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_is_refused_with_a_reason(bridge: Bridge, case: str) -> None:
    make, detail = BAD_TOKENS[case]
    token = make(bridge)
    assert_invalid_token(bridge.whoami(token), detail, token)


def test_missing_token(bridge: Bridge) -> None:
    response = bridge.whoami()
    assert_problem(response, 401, "missing bearer token")
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="{AUD}"'


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Bearer a b", "Token abc"])
def test_malformed_authorization_header(bridge: Bridge, header: str) -> None:
    assert_invalid_token(bridge.whoami(authorization=header), "malformed Authorization header")


def test_revocation_takes_effect_on_the_next_request(bridge: Bridge) -> None:
    assert bridge.whoami(bridge.token()).status_code == 200
    KeyStore(bridge.settings.keys_path).revoke(bridge.kid)  # another process (the CLI) revokes
    assert_invalid_token(bridge.whoami(bridge.token()), f"API key {bridge.kid} has been revoked")


def test_replayed_token_is_refused(bridge: Bridge, redis_server: RedisServer) -> None:
    token = bridge.token(lifetime_s=60)
    assert bridge.whoami(token).status_code == 200
    body = assert_problem(bridge.whoami(token), 401, "replayed")
    assert body["code"] == "replayed"
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    ttl = redis.Redis(port=redis_server.port).ttl(f"jti:{jti}")
    assert 60 < ttl <= 60 + 30  # remembered until exp + leeway, then forgotten


def test_refused_token_does_not_burn_its_jti(bridge: Bridge) -> None:
    jti = secrets.token_urlsafe(12)
    assert bridge.whoami(forge(bridge, jti=jti, aud="elsewhere")).status_code == 401
    assert bridge.whoami(forge(bridge, jti=jti)).status_code == 200


def test_replay_store_down_is_503_not_401(bridge: Bridge) -> None:
    settings = make_settings(bridge.settings.storage_root, f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    client = create_app(settings).test_client()
    response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {bridge.token()}"})
    assert_problem(response, 503, "replay store (Redis) is unavailable")
    assert response.headers["Retry-After"]


def test_missing_scope_is_403(bridge: Bridge) -> None:
    @bridge.app.get("/scoped")
    @require_token("avatars:write")
    def scoped() -> dict[str, str]:
        return {"ok": "yes"}

    response = bridge.client.get("/scoped", headers={"Authorization": f"Bearer {bridge.token()}"})
    assert_problem(response, 403, "avatars:write")
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    token = bridge.token(scopes=["avatars:write"])
    assert bridge.client.get("/scoped", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# --- API keys ----------------------------------------------------------------------------------


def test_keys_file_is_private_and_round_trips(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    old_umask = os.umask(0o022)
    try:
        first, second = store.create(), store.create(admin=True)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    kid1, secret1 = parse_api_key(first)
    kid2, _ = parse_api_key(second)
    assert len(secret1) == 32 and store.secret_for(kid1) == secret1
    infos = {info.kid: info for info in store.list()}
    assert set(infos) == {kid1, kid2} and infos[kid2].admin and not infos[kid1].admin
    store.revoke(kid1)
    assert store.secret_for(kid1) is None and store.get(kid1).revoked  # type: ignore[union-attr]
    assert store.secret_for(kid2) is not None
    assert first.split("_", 2)[2] not in (tmp_path / "keys.json").read_text()  # revoked secrets are erased
    with pytest.raises(KeyError):
        store.revoke("ffffffff")


def test_key_listing_never_shows_secrets(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create()
    secret_text = key.split("_", 2)[2]
    shown = repr(store.list()) + repr(store.get(parse_api_key(key)[0])) + repr(store._current())
    assert secret_text not in shown and repr(parse_api_key(key)[1]) not in shown


def test_world_readable_keys_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = KeyStore(path)
    kid, _ = parse_api_key(store.create())
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"mode 0644.*chmod 600"):
        KeyStore(path).secret_for(kid)


def test_unusable_keys_file_is_503(bridge: Bridge) -> None:
    bridge.settings.keys_path.chmod(0o640)
    assert_problem(bridge.whoami(bridge.token()), 503, "keys file is unavailable")


@pytest.mark.parametrize(("key", "message"), [
    ("thk_0123abcd_" + b64(secrets.token_bytes(16)), "16 bytes; at least 32"),
    ("sk_0123abcd_" + b64(secrets.token_bytes(32)), "must start with 'thk_'"),
    ("thk_0123ABCD_" + b64(secrets.token_bytes(32)), "8 lowercase hex"),
    ("thk_0123abcd_" + "a" * 43 + "=", "thk_<8 lowercase hex kid>"),
    ("thk_0123abcd_" + "Q" * 45, "not valid base64url"),
])
def test_bad_api_keys_are_refused(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_api_key(key)
    assert key.split("_", 2)[2] not in str(info.value)


# --- health, errors, OpenAPI --------------------------------------------------------------------


def test_livez_and_readyz(bridge: Bridge) -> None:
    assert bridge.client.get("/livez").get_json() == {"status": "ok"}
    response = bridge.client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}


def test_readyz_names_redis_when_it_is_down(tmp_path: Path) -> None:
    client = create_app(make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0")).test_client()
    body = assert_problem(client.get("/readyz"), 503, "redis")
    assert body["checks"]["redis"] != "ok" and body["checks"]["storage"] == "ok"
    assert client.get("/livez").status_code == 200


def test_readyz_names_storage_when_disk_is_short(tmp_path: Path, redis_server: RedisServer) -> None:
    client = create_app(make_settings(tmp_path, redis_server.url, min_free_bytes=2**62)).test_client()
    body = assert_problem(client.get("/readyz"), 503, "storage: low disk space")
    assert body["checks"]["redis"] == "ok"


def test_http_errors_are_problem_json(bridge: Bridge) -> None:
    assert_problem(bridge.client.get("/no/such/thing"), 404, "no resource")
    response = bridge.client.post("/livez")
    assert_problem(response, 405, "does not support")
    assert "GET" in response.headers["Allow"]


def test_validation_and_size_errors_are_problem_json(tmp_path: Path, redis_server: RedisServer) -> None:
    app = create_app(make_settings(tmp_path, redis_server.url, max_content_length=1024))

    class EchoIn(Schema):
        text = String(required=True)

    @app.post("/echo")
    @app.input(EchoIn)
    def echo(json_data: dict[str, Any]) -> dict[str, Any]:
        return json_data

    client = app.test_client()
    assert client.post("/echo", json={"text": "hi"}).get_json() == {"text": "hi"}
    body = assert_problem(client.post("/echo", json={}), 422, "text: Missing data")
    assert body["field"] == "text" and body["errors"] == [{"in": "json", "field": "text",
                                                            "message": "Missing data for required field."}]
    assert_problem(client.post("/echo", json={"text": "x" * 2000}), 413, "larger than")


def test_openapi_declares_bearer_and_problem_json(bridge: Bridge) -> None:
    response = bridge.client.get("/openapi.json")
    spec = json.loads(response.get_data(as_text=True))
    scheme = spec["components"]["securitySchemes"]["BearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    whoami = spec["paths"]["/v1/whoami"]["get"]
    assert whoami["security"] == [{"BearerAuth": []}]
    assert "application/problem+json" in whoami["responses"]["401"]["content"]
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for status, resp in operation["responses"].items():
                if status[0] in "45":
                    assert set(resp["content"]) == {"application/problem+json"}, (path, status)
    assert "security" not in spec["paths"]["/livez"]["get"]
    assert bridge.client.get("/docs").status_code == 200


# --- CLI ----------------------------------------------------------------------------------------


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_STORAGE_ROOT=str(root), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=env,
                          cwd=root.parent, timeout=30, check=False)


def test_cli_keys_create_list_revoke(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    created = run_cli(root, "keys", "create")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"thk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", lines[0])
    kid = parse_api_key(lines[0])[0]
    listed = run_cli(root, "keys", "list")
    assert kid in listed.stdout and lines[0].split("_", 2)[2] not in listed.stdout
    assert re.search(rf"^{kid}\s+\S+\s+no\s+no", listed.stdout, re.M)
    assert run_cli(root, "keys", "revoke", kid).returncode == 0
    assert re.search(rf"^{kid}\s+\S+\s+no\s+yes", run_cli(root, "keys", "list").stdout, re.M)
    missing = run_cli(root, "keys", "revoke", "ffffffff")
    assert missing.returncode == 1 and "no key with id ffffffff" in missing.stderr


def test_cli_serve_answers_livez(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_STORAGE_ROOT=str(tmp_path), BRIDGE_PORT=str(port), BRIDGE_REDIS_URL=redis_server.url,
               PYTHONPATH=str(REPO))
    server = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1) as response:
                    assert json.load(response) == {"status": "ok"}
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=10)
