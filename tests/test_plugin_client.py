"""The plugin's bridge client on its own: its tokens pass the bridge's own checks, and every way a call can
fail becomes a sentence an admin can act on (including clock skew, which the stdio tests cannot fake)."""

from __future__ import annotations

import email.utils
import re
import time
from pathlib import Path

import jwt
import pytest
import requests

from bridge.auth import verify_token
from bridge.keys import KeyStore
from bridge.settings import BridgeSettings
from tools.bridge_client import BridgeClient, BridgeConfig, BridgeError


class OnceStore:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def claim(self, jti: str, expires_at: int) -> bool:
        fresh = jti not in self.seen
        self.seen.add(jti)
        return fresh


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[BridgeSettings, KeyStore, str]:
    settings = BridgeSettings(_env_file=None, storage_root=tmp_path)  # type: ignore[call-arg]
    store = KeyStore(settings.keys_path)
    return settings, store, store.create()


def client(api_key: str, url: str = "http://bridge.test:8808") -> BridgeClient:
    return BridgeClient(BridgeConfig.from_credentials({"bridge_url": url, "api_key": api_key}), "dify-user-7")


def test_tokens_pass_the_bridges_checks_once(keyed: tuple[BridgeSettings, KeyStore, str]) -> None:
    settings, store, api_key = keyed
    token = client(api_key).token("jobs:read jobs:write")
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "th+jwt" and header["alg"] == "HS256" and header["kid"] == api_key.split("_")[1]
    replay = OnceStore()
    claims = verify_token(token, store, settings, replay)
    assert claims.sub == "dify-user-7" and claims.scopes == {"jobs:read", "jobs:write"}
    assert claims.expires_at - claims.issued_at == 120
    assert client(api_key).token("jobs:read") != token  # a fresh jti every call
    with pytest.raises(Exception, match="replayed"):
        verify_token(token, store, settings, replay)


@pytest.mark.parametrize(("credentials", "message"), [
    ({"bridge_url": "bridge:8808", "api_key": "thk_01234567_" + "A" * 43}, "Bridge URL must look like"),
    ({"bridge_url": "ftp://bridge", "api_key": "thk_01234567_" + "A" * 43}, "Bridge URL must look like"),
    ({"bridge_url": "http://bridge/?x=1", "api_key": "thk_01234567_" + "A" * 43}, "query string"),
    ({"bridge_url": "http://bridge", "api_key": "sk-123"}, "whole thk_"),
    ({"bridge_url": "http://bridge", "api_key": ""}, "whole thk_"),
])
def test_malformed_credentials(credentials: dict[str, str], message: str) -> None:
    with pytest.raises(BridgeError, match=message):
        BridgeConfig.from_credentials(credentials)


def answer(status: int, body: bytes, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update({"Content-Type": "application/problem+json", **headers})
    return response


def test_clock_skew_is_named_with_its_size(keyed: tuple[BridgeSettings, KeyStore, str]) -> None:
    before = time.time()
    bridge_time = email.utils.formatdate(before - 200, usegmt=True)  # the bridge is 200 s behind
    problem = b'{"status": 401, "detail": "token is not yet valid (iat is in the future)", "code": "not_yet_valid"}'
    with pytest.raises(BridgeError) as caught:
        client(keyed[2])._result(answer(401, problem, Date=bridge_time))
    after = time.time()
    message = str(caught.value)
    assert "not yet valid" in message and "NTP" in message
    # The skew the client saw lies between the two readings of this clock, however long the call took.
    said = re.search(r"clock is \+(\d+) s off", message)
    behind = email.utils.parsedate_to_datetime(bridge_time).timestamp()
    assert said and round(before - behind) <= int(said[1]) <= round(after - behind), message


@pytest.mark.parametrize(("status", "body", "expected"), [
    (401, b'{"status": 401, "detail": "unknown API key abcd1234", "code": "unknown_key"}', "keys create"),
    (401, b'{"status": 401, "detail": "bad signature: not signed with this key"}', "paste the whole key again"),
    (403, b'{"status": 403, "detail": "token lacks the scope(s): avatars:write"}', "avatars:write"),
    (413, b'{"status": 413, "detail": "the request body is larger than 100 bytes"}', "larger than the bridge"),
    (422, b'{"status": 422, "detail": "avatar_id: no avatar \'x\'"}', "Avatar_id: no avatar"),
    (503, b'{"status": 503, "detail": "not ready: redis: unreachable"}', "try again in a minute"),
    (200, b"<html>hello</html>", "not like a Talking Head bridge"),
    (404, b"Not Found", "not like a Talking Head bridge"),
])
def test_failures_become_sentences(keyed: tuple[BridgeSettings, KeyStore, str], status: int, body: bytes,
                                   expected: str) -> None:
    with pytest.raises(BridgeError, match=expected):
        client(keyed[2])._result(answer(status, body))
