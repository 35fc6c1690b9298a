"""Talking Head (remote): the same render done by a bridge's GPU workers, for sites whose ComfyUI host is
not the render host. Text or AUDIO goes up, the finished MP4 comes back as ``VIDEO`` plus its signed link."""

from __future__ import annotations

import time

import comfy.model_management
import comfy.utils
import requests
from comfy_api.input_impl import VideoFromFile
from requests.auth import AuthBase

from bridge.auth import mint_token
from bridge.keys import parse_api_key
from bridge.settings import BridgeSettings

from .. import convert, host

NODE = "Talking Head (remote)"
POLL_S = 2.0
TIMEOUT_S = 900.0
SUB = "comfyui"
"""Who the tokens name: with the key's id, the owner of the jobs this node submits."""
SCOPES = ["jobs:read", "jobs:write"]
KEY_FIX = "paste a valid bridge API key (thk_…; create one with `python -m bridge keys create` on the bridge)"


class _TokenAuth(AuthBase):
    """A fresh single-use token on every request: the bridge refuses the API key itself and a replayed token,
    and the key never leaves this process."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        fields = BridgeSettings.model_fields
        self.audience, self.issuer = fields["jwt_audience"].default, fields["jwt_issuer"].default

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = mint_token(self.api_key, SUB, SCOPES, self.audience, self.issuer)
        request.headers["Authorization"] = f"Bearer {token}"
        return request


def _fail(problem: str, fix: str) -> host.NodeError:
    return host.NodeError(NODE, problem, fix)


def _detail(response: requests.Response) -> str:
    """The bridge's problem document (RFC 9457) says what was wrong in ``detail``."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail") or body.get("title") or body)[:300] if isinstance(body, dict) else str(body)[:300]


def _check(response: requests.Response, doing: str) -> dict:
    if response.status_code in (401, 403):
        raise _fail(f"the bridge refused the API key while {doing} ({_detail(response)})", KEY_FIX)
    if response.status_code >= 400:
        raise _fail(f"the bridge answered {response.status_code} while {doing}: {_detail(response)}",
                    "check the inputs")
    return response.json()


class TalkingHeadRemote:
    """Polls the job (Stop cancels it on the bridge) and mirrors its progress in ComfyUI's bar."""

    CATEGORY = host.CATEGORY
    DESCRIPTION = "Renders a talking head (lip sync) on a remote bridge's workers; returns the video and its link."
    RETURN_TYPES = ("VIDEO", "STRING")
    RETURN_NAMES = ("video", "link")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "bridge_url": ("STRING", {"default": "http://127.0.0.1:8000"}),
                "api_key": ("STRING", {"default": "", "tooltip": "A bridge API key (Bearer token)."}),
                "avatar_id": ("STRING", {"default": "astronaut", "tooltip": "An avatar id on the bridge."}),
                "text": ("STRING", {"multiline": True, "default": "Hello! I am a talking head."}),
                "language": ("STRING", {"default": "auto"}),
                "voice": ("STRING", {"default": ""}),
                "resolution": (["source", "720p", "1080p"], {"default": "source"}),
            },
            "optional": {"audio": ("AUDIO", {"tooltip": "Speech to lip-sync instead of the text."})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def render(self, bridge_url: str, api_key: str, avatar_id: str, text: str, language: str, voice: str,
               resolution: str, audio: dict | None = None, unique_id: str | None = None) -> tuple:
        try:
            parse_api_key(api_key.strip())
        except ValueError as err:
            raise _fail(f"api_key is not a bridge API key: {err}", KEY_FIX) from None
        base = bridge_url.rstrip("/")
        session = requests.Session()
        session.auth = _TokenAuth(api_key.strip())
        fields = {"avatar_id": avatar_id, "resolution": resolution}
        try:
            if audio is not None:
                path = convert.write_wav(audio, host.fresh_path(".wav"))
                with path.open("rb") as fh:
                    response = session.post(f"{base}/v1/jobs", data=fields,
                                            files={"audio": ("speech.wav", fh, "audio/wav")}, timeout=60)
            else:
                body = {**fields, "text": text, "lang": language, **({"voice": voice} if voice else {})}
                response = session.post(f"{base}/v1/jobs", json=body, timeout=60)
            job = _check(response, "submitting the job")
            job = self._wait(session, base, job, unique_id)
            link = job["outputs"][0]["video_url"]
            download = requests.get(link, timeout=300)
            download.raise_for_status()
        except requests.RequestException as err:
            raise _fail(f"cannot reach the bridge at {base} ({err.__class__.__name__})",
                        "check bridge_url and that the bridge is up (GET /readyz)") from err
        out = host.fresh_path(".mp4")
        out.write_bytes(download.content)
        return (VideoFromFile(str(out)), link)

    def _wait(self, session: requests.Session, base: str, job: dict, unique_id: str | None) -> dict:
        bar = comfy.utils.ProgressBar(100, node_id=unique_id)
        deadline = time.monotonic() + TIMEOUT_S
        while job["status"] in ("queued", "running"):
            if comfy.model_management.processing_interrupted():
                session.post(f"{base}/v1/jobs/{job['id']}/cancel", timeout=30)
                comfy.model_management.throw_exception_if_processing_interrupted()
            if time.monotonic() > deadline:
                raise _fail(f"job {job['id']} did not finish in {TIMEOUT_S:.0f} s", "check the bridge's workers")
            time.sleep(POLL_S)
            job = _check(session.get(f"{base}/v1/jobs/{job['id']}", timeout=30), "polling the job")
            bar.update_absolute(round(100 * float(job.get("progress") or 0)))
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise _fail(f"job {job['id']} {job['status']}: {error.get('message', 'no reason given')}",
                        "fix what the message names and queue the prompt again")
        return job
