"""Working the bridge by hand: ``python -m bridge token`` prints a token the API accepts once, its mistakes say
what to change without echoing the key, and an API key sent where the token goes is told how to get one.

The command runs as a user runs it (a subprocess, the key in an environment variable or on stdin); its tokens
are checked by the real app with a real redis-server as the replay store.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from flask.testing import FlaskClient

from bridge.app import create_app
from bridge.auth import SCOPES, TOKEN_TYPE
from bridge.keys import KeyStore, format_api_key, parse_api_key
from tests.bridge_fixtures import REPO, RedisServer, make_settings

KEY_ENV = "TALKING_HEAD_API_KEY"


@pytest.fixture
def api(tmp_path: Path, redis_server: RedisServer) -> tuple[FlaskClient, str]:
    """The API's test client and an API key it knows."""
    settings = make_settings(tmp_path / "storage", redis_server.url)
    app = create_app(settings)
    return app.test_client(), KeyStore(settings.keys_path).create()


def token_cli(*args: str, key: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m bridge token ARGS``, with ``key`` in TALKING_HEAD_API_KEY when given, from a clean directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_") and k != KEY_ENV}
    env["PYTHONPATH"] = str(REPO)
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run([sys.executable, "-m", "bridge", "token", *args], input=stdin or "", capture_output=True,
                          text=True, env=env, cwd=REPO / "tests", timeout=60, check=False)


def secret_of(key: str) -> str:
    """What must never be shown: a key's secret (its kid may be), or the whole of something else."""
    return key.split("_", 2)[2] if key.startswith("thk_") else key


def lifetime(token: str) -> int:
    claims = jwt.decode(token, options={"verify_signature": False})
    return int(claims["exp"] - claims["iat"])


def whoami(client: FlaskClient, credential: str) -> tuple[int, dict]:
    response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {credential}"})
    return response.status_code, response.get_json()


def test_token_from_the_environment_works_once(api: tuple[FlaskClient, str]) -> None:
    client, key = api
    minted = token_cli(key=key)
    assert (minted.returncode, minted.stderr) == (0, "")
    [token] = minted.stdout.splitlines()
    assert secret_of(key) not in minted.stdout
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": TOKEN_TYPE, "kid": parse_api_key(key)[0]}
    status, who = whoami(client, token)
    assert status == 200, who
    assert (who["sub"], sorted(who["scopes"])) == ("cli", sorted(SCOPES))
    assert lifetime(token) == 120
    status, again = whoami(client, token)
    assert (status, again["code"]) == (401, "replayed")


def test_token_from_stdin_for_another_sub_and_fewer_scopes(api: tuple[FlaskClient, str]) -> None:
    client, key = api
    minted = token_cli("--key", "-", "--sub", "alice", "--scope", "jobs:read", "--scope", "jobs:write",
                       "--lifetime", "60", stdin=key + "\n")
    assert minted.returncode == 0, minted.stderr
    status, who = whoami(client, minted.stdout.strip())
    assert status == 200, who
    assert (who["sub"], sorted(who["scopes"])) == ("alice", ["jobs:read", "jobs:write"])
    assert lifetime(minted.stdout.strip()) == 60


def test_the_key_given_as_an_option_works_too(api: tuple[FlaskClient, str]) -> None:
    client, key = api
    minted = token_cli("--key", key, "--scope", "jobs:read avatars:write")
    assert minted.returncode == 0, minted.stderr
    status, who = whoami(client, minted.stdout.strip())
    assert status == 200 and sorted(who["scopes"]) == ["avatars:write", "jobs:read"]


GOOD_KEY = format_api_key("0123abcd", secrets.token_bytes(32))
SHORT_KEY = "thk_0123abcd_" + secrets.token_urlsafe(12)

MISTAKES: dict[str, tuple[tuple[str, ...], str | None, str | None, str]] = {
    # case: (arguments, TALKING_HEAD_API_KEY, stdin, what stderr says)
    "no key anywhere": ((), None, None, f"no API key: set {KEY_ENV}, or pass --key - to read it from stdin"),
    "empty stdin": (("--key", "-"), None, "", "no API key in stdin"),
    "not a key": ((), "sk-" + secrets.token_urlsafe(32), None, f"the API key in {KEY_ENV} must start with 'thk_'"),
    "secret too short": ((), SHORT_KEY, None, "at least 32 are required"),
    "key typed where no option takes it": ((GOOD_KEY,), None, None, "unrecognized arguments: thk_0123abcd_[REDACTED]"),
    "unknown scope": (("--scope", "jobs:delete"), GOOD_KEY, None,
                      "--scope jobs:delete is not a scope; choose from avatars:write, jobs:read, jobs:write"),
    "lifetime over the bridge's maximum": (("--lifetime", "301"), GOOD_KEY, None, "--lifetime must be 1 to 300 s"),
    "empty sub": (("--sub", ""), GOOD_KEY, None, "--sub: must be a string of 1 to 255 characters"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistakes_say_what_to_change_and_never_echo_the_key(case: str) -> None:
    args, env_key, stdin, message = MISTAKES[case]
    refused = token_cli(*args, key=env_key, stdin=stdin)
    assert refused.returncode == 2 and refused.stdout == ""
    assert message in refused.stderr
    for key in (GOOD_KEY, SHORT_KEY, env_key or GOOD_KEY):
        assert secret_of(key) not in refused.stderr


@pytest.mark.parametrize("header", ["Bearer {key}", "{key}", "Token {key}", "bearer  {key} "])
def test_an_api_key_sent_as_the_token_is_told_how_to_mint_one(api: tuple[FlaskClient, str], header: str) -> None:
    client, key = api
    response = client.get("/v1/whoami", headers={"Authorization": header.format(key=key)})
    problem = response.get_json()
    assert response.status_code == 401 and problem["code"] == "api_key_not_token"
    assert "python -m bridge token" in problem["detail"] and "revoke the key" in problem["detail"]
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert secret_of(key) not in response.get_data(as_text=True) + str(response.headers)


def test_a_request_without_a_token_says_how_to_get_one(api: tuple[FlaskClient, str]) -> None:
    client, _ = api
    response = client.get("/v1/whoami")
    assert response.status_code == 401 and "python -m bridge token" in response.get_json()["detail"]
