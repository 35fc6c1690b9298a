"""The Dify plugin driven exactly as Dify's plugin daemon drives it: `python -m main` in the plugin root
(Python 3.12, the real dify_plugin SDK), JSON requests on stdin, session messages on stdout, against a
live bridge (gunicorn), a real worker and Redis started here.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from jsonschema import Draft202012Validator

from bridge.keys import KeyStore
from scripts.dify_daemon import PluginProcess, Reply, dify_file
from tests.bridge_fixtures import (
    REPO,
    RedisServer,
    free_port,
    run_bridge_serve,
    run_bridge_worker,
    run_receiver,
    served_bridge,
)
from tests.conftest import ffprobe
from tests.dify_agent_schema import agent_schema, tool_specs
from tests.standins.render_gate import Arming, RenderGate

PHOTO = "astronaut-photo"


@dataclass
class Stack:
    base: str
    credentials: dict[str, str]
    keys: KeyStore
    root: Path
    env: dict[str, str]
    receiver_base: str
    gate: RenderGate
    """Holds a render at lip-sync while armed (the worker is tests/standins/render_gate.py)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path,
          sample_media: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("bridge")
    with run_receiver(sample_media) as receiver, \
            served_bridge(root, redis_server.url, storage, fetch_allow_http_hosts=[f"127.0.0.1:{receiver.port}"],
                          reaper_interval_s=0.5) as served:
        keys = KeyStore(served.settings.keys_path)
        yield Stack(served.base, {"bridge_url": served.base, "api_key": keys.create()}, keys, root, served.env,
                    receiver.base, served.gate)


@pytest.fixture(scope="module")
def plugin() -> Iterator[PluginProcess]:
    with PluginProcess() as running:
        yield running


Answered = Callable[[str, str, requests.Response], None]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


@contextlib.contextmanager
def run_relay(target: str, answered: Answered) -> Iterator[str]:
    """A plain HTTP relay in front of the bridge that tells ``answered`` (method, path, response) about every
    answer before the plugin gets it: how a test knows what the plugin has seen, while the plugin still runs.
    Yields the relay's base URL (an ephemeral loopback port, bound before anyone is told it)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            return None

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = requests.request(self.command, f"{target}{self.path}", headers=headers, data=body,
                                        allow_redirects=False, timeout=30)
            answered(self.command, self.path, upstream)
            self.send_response(upstream.status_code)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        do_GET = do_POST = do_DELETE = _relay

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def open_once_the_plugin_sees_it_rendering(arming: Arming) -> Answered:
    """Opens the gate after the relay has passed the plugin a job at the lip-sync stage."""

    def answered(method: str, path: str, response: requests.Response) -> None:
        if method == "GET" and re.fullmatch(r"/v1/jobs/[0-9a-f-]+", path) and response.status_code == 200:
            job = response.json()
            if job["status"] == "running" and job["stage"] == "lipsync":
                arming.open()

    return answered


def error_of(reply: Reply) -> str:
    assert reply.error is not None, reply.messages
    return str(reply.error["message"])


def as_an_agent(plugin: PluginProcess, stack: Stack, tool: str, arguments: dict[str, str],
                user_id: str = "end-user-7") -> Reply:
    """A call the way a Dify agent makes it: the arguments fit the schema Dify gives the model (so only
    llm-form parameters, no files), every value a string, and no form settings at all."""
    assert all(isinstance(value, str) for value in arguments.values()), arguments
    Draft202012Validator(agent_schema(tool_specs()[tool])).validate(arguments)
    return plugin.invoke(tool, arguments, stack.credentials, user_id=user_id)


def options_for(plugin: PluginProcess, stack: Stack, tool: str, parameter: str, user_id: str) -> list[dict]:
    """What a dropdown offers the console user ``user_id`` (Dify fetches options with that user's id)."""
    reply = plugin.request({"user_id": user_id, "type": "dynamic_parameter", "action": "fetch_parameter_options",
                            "provider": "talking_head", "provider_action": tool, "parameter": parameter,
                            "credentials": stack.credentials, "credential_type": "api-key"}, timeout_s=60)
    assert reply.error is None, reply.error
    return list(reply.messages[0]["options"])


# --- credentials --------------------------------------------------------------------------------


def test_good_credentials_validate(plugin: PluginProcess, stack: Stack) -> None:
    reply = plugin.validate(stack.credentials)
    assert reply.error is None and reply.messages == [{"result": True}]


def test_bad_credentials_get_messages_an_admin_can_act_on(plugin: PluginProcess, stack: Stack) -> None:
    unknown = "thk_0badc0de_" + "A" * 43
    assert "does not accept API key 0badc0de" in error_of(plugin.validate({**stack.credentials, "api_key": unknown}))
    revoked = stack.keys.create()
    stack.keys.revoke(revoked.split("_")[1])
    message = error_of(plugin.validate({**stack.credentials, "api_key": revoked}))
    assert "revoked" in message and "keys create" in message
    port = free_port()
    message = error_of(plugin.validate({**stack.credentials, "bridge_url": f"http://127.0.0.1:{port}"}))
    assert f"Cannot reach the bridge at http://127.0.0.1:{port}" in message
    assert "not like a Talking Head bridge" in error_of(
        plugin.validate({**stack.credentials, "bridge_url": stack.receiver_base}))
    assert "thk_" in error_of(plugin.validate({**stack.credentials, "api_key": "sk-something-else"}))
    assert "Bridge URL" in error_of(plugin.validate({**stack.credentials, "bridge_url": "bridge:8808"}))
    assert plugin.alive


# --- the tools ---------------------------------------------------------------------------------


def test_text_to_video_returns_file_link_json_and_variables(plugin: PluginProcess, stack: Stack,
                                                            tmp_path: Path) -> None:
    # The render waits at lip-sync until the plugin has been told so: progress is seen however fast it renders.
    with stack.gate.armed() as arming, run_relay(stack.base, open_once_the_plugin_sees_it_rendering(arming)) as base:
        reply = plugin.invoke("text_to_video", {"text": "Hello from Dify. This is a talking head video.",
                                                "avatar": "astronaut", "subtitles": True},
                              {**stack.credentials, "bridge_url": base})
    assert reply.error is None, reply.error
    [(video, meta)] = reply.blobs
    assert meta["mime_type"] == "video/mp4" and meta["filename"].endswith(".mp4")
    path = tmp_path / "video.mp4"
    path.write_bytes(video)
    streams = {s["codec_type"]: s["codec_name"] for s in ffprobe(path)["streams"]}
    assert streams == {"video": "h264", "audio": "aac"}
    variables = reply.variables
    assert set(variables) == {"job_id", "video_url", "duration_s", "poster_url", "subtitles_url"}
    assert reply.links == [variables["video_url"]]
    assert requests.get(variables["video_url"], timeout=30).content == video
    assert requests.get(variables["subtitles_url"], timeout=30).text.startswith("WEBVTT")
    [job] = reply.jsons
    assert job["id"] == variables["job_id"] and job["status"] == "succeeded"
    labels = [log["label"] for log in reply.logs]
    assert labels[0] == "Talking head video" and any(label.startswith("rendering") for label in labels), labels


def test_link_delivery_and_the_file_size_cap(plugin: PluginProcess, stack: Stack) -> None:
    linked = plugin.invoke("text_to_video", {"text": "Just the link.", "avatar": PHOTO, "delivery": "link"},
                           stack.credentials)
    assert reply_ok(linked) and linked.blobs == [] and linked.links
    capped = plugin.invoke("text_to_video", {"text": "Too big for this Dify.", "avatar": PHOTO},
                           {**stack.credentials, "max_file_mb": "0.01"})
    assert reply_ok(capped) and capped.blobs == [] and capped.links
    assert any("only its link is returned" in text for text in capped.texts)


def reply_ok(reply: Reply) -> bool:
    assert reply.error is None, reply.error
    return True


def test_audio_to_video_from_a_dify_file_and_from_a_url(plugin: PluginProcess, stack: Stack,
                                                        sample_media: Path) -> None:
    speech = dify_file(f"{stack.receiver_base}/speech.mp3", "greeting.mp3", "audio/mpeg", "audio",
                       (sample_media / "speech.mp3").stat().st_size)
    from_file = plugin.invoke("audio_to_video", {"audio": speech, "avatar": PHOTO}, stack.credentials)
    assert reply_ok(from_file) and from_file.blobs
    assert from_file.variables["duration_s"] > 2.0
    from_url = plugin.invoke("audio_to_video", {"audio_url": f"{stack.receiver_base}/speech.wav", "avatar": PHOTO},
                             stack.credentials)
    assert reply_ok(from_url) and from_url.blobs
    both = plugin.invoke("audio_to_video", {"audio": speech, "audio_url": "https://x.example/a.wav"},
                         stack.credentials)
    assert "either as the audio file or as audio_url" in error_of(both)


def test_create_avatar_then_list_and_use_it(plugin: PluginProcess, stack: Stack, sample_media: Path) -> None:
    photo = dify_file(f"{stack.receiver_base}/face.png", "anna.png", "image/png", "image",
                      (sample_media / "face.png").stat().st_size)
    created = plugin.invoke("create_avatar", {"file": photo, "name": "Anna"}, stack.credentials, user_id="anna-owner")
    assert reply_ok(created)
    avatar_id = created.variables["avatar_id"]
    assert any("is ready" in text for text in created.texts)
    listed = plugin.invoke("list_avatars", {}, stack.credentials, user_id="anna-owner")
    assert reply_ok(listed)
    anna = next(a for a in listed.jsons[0]["avatars"] if a["id"] == avatar_id)
    assert anna["name"] == "Anna" and "Anna" in listed.texts[0] and "preview: http" in listed.texts[0]
    assert requests.get(anna["preview_url"], timeout=30).headers["Content-Type"] == "image/jpeg"
    colleague = plugin.invoke("list_avatars", {}, stack.credentials, user_id="someone-else")
    assert avatar_id in {a["id"] for a in colleague.jsons[0]["avatars"]}  # the workspace's avatar, for every user
    # The dropdown a console user sees offers it too, and an end user of the published app can use it.
    assert avatar_id in {o["value"] for o in options_for(plugin, stack, "text_to_video", "avatar_choice",
                                                           "console-editor")}
    video = plugin.invoke("text_to_video", {"text": "I am Anna.", "avatar_choice": avatar_id}, stack.credentials,
                          user_id="someone-else")
    assert reply_ok(video) and video.blobs
    assert video.jsons[0]["outputs"][0]["avatar_id"] == avatar_id


def test_an_agent_round_with_only_llm_parameters_as_strings(plugin: PluginProcess, stack: Stack) -> None:
    """What an agent does when asked for "a video of Carla, from this photo link, in an American voice"."""
    listed = as_an_agent(plugin, stack, "list_avatars", {})
    assert reply_ok(listed) and "Astronaut (sample)" in listed.texts[0]
    english = as_an_agent(plugin, stack, "list_voices", {"language": "en"})
    assert reply_ok(english) and "en-us" in {v["id"] for v in english.jsons[0]["voices"]}
    assert all(any(code.startswith("en") for code in v["languages"]) for v in english.jsons[0]["voices"])
    assert "en-us" in {v["id"] for v in as_an_agent(plugin, stack, "list_voices", {"language": "English"}).jsons[0]
                       ["voices"]}
    nothing = as_an_agent(plugin, stack, "create_avatar", {"name": "Carla"})  # the user attached a file instead
    assert "as url" in error_of(nothing) and "ask the user for a link" in error_of(nothing)
    created = as_an_agent(plugin, stack, "create_avatar", {"url": f"{stack.receiver_base}/face.png",
                                                           "name": "Carla"})
    assert reply_ok(created) and any("is ready" in text for text in created.texts)
    video = as_an_agent(plugin, stack, "text_to_video", {"text": "Hello, I am Carla.", "avatar": "carla",
                                                         "voice": "english (america)", "language": "en"})
    assert reply_ok(video) and video.blobs and video.links
    assert video.jsons[0]["outputs"][0]["avatar_id"] == created.variables["avatar_id"]
    later = as_an_agent(plugin, stack, "get_video", {"job_id": video.variables["job_id"]})
    assert reply_ok(later) and later.blobs


def test_dynamic_options_list_avatars_and_voices(plugin: PluginProcess, stack: Stack) -> None:
    for tool in ("text_to_video", "audio_to_video"):
        options = options_for(plugin, stack, tool, "avatar_choice", "dify-admin")
        assert PHOTO in {o["value"] for o in options} and all(o["label"]["en_US"] for o in options)
    values = {o["value"] for o in options_for(plugin, stack, "text_to_video", "voice_choice", "dify-admin")}
    assert "en-us" in values and len(values) > 50
    # The typed parameters are strings, not dropdowns: nothing to fetch for them.
    assert options_for(plugin, stack, "text_to_video", "avatar", "dify-admin") == []


def test_slow_job_returns_its_id_and_get_video_fetches_it_later(plugin: PluginProcess, stack: Stack) -> None:
    # A second API whose queue no worker serves yet: the job surely outlasts the tool's wait.
    later = {**stack.env, "BRIDGE_QUEUE": "later"}
    with run_bridge_serve(later, stack.root / "serve-later.log") as base:
        credentials = {**stack.credentials, "bridge_url": base}
        started = time.monotonic()
        reply = plugin.invoke("text_to_video", {"text": "Worth the wait.", "avatar": PHOTO, "max_wait_s": 5},
                              credentials)
        waited = time.monotonic() - started
        assert reply_ok(reply) and reply.blobs == [] and reply.links == []
        job_id = reply.variables["job_id"]
        assert 5 <= waited < 15 and any(f"job id is {job_id}" in text for text in reply.texts), reply.texts
        assert any("waiting for a free renderer" in text for text in reply.texts)
        gaps = [b - a for a, b in zip(reply.heartbeats_during, reply.heartbeats_during[1:], strict=False)]
        assert len(reply.heartbeats_during) >= 6 and max(gaps) < 2.0  # the SDK kept beating while the tool waited
        assert plugin.invoke("get_video", {"job_id": job_id}, credentials).blobs == []  # still queued
        with run_bridge_worker(later, stack.root / "worker-later.log", REPO):
            deadline = time.monotonic() + 120
            while True:
                fetched = plugin.invoke("get_video", {"job_id": job_id}, credentials)
                assert reply_ok(fetched)
                if fetched.blobs:
                    break
                assert time.monotonic() < deadline, fetched.texts
                time.sleep(1)
    assert fetched.variables["job_id"] == job_id and fetched.links


# --- bad input and failures -----------------------------------------------------------------------


def test_bad_input_is_a_clear_tool_error_and_the_plugin_lives_on(plugin: PluginProcess, stack: Stack) -> None:
    assert "text is empty" in error_of(plugin.invoke("text_to_video", {"text": "  "}, stack.credentials))
    assert "no avatar 'nobody'" in error_of(
        plugin.invoke("text_to_video", {"text": "Hi.", "avatar": "nobody"}, stack.credentials))
    # What is typed wins over the dropdown's choice, and the choice counts when nothing is typed.
    assert "no avatar 'nobody'" in error_of(plugin.invoke(
        "text_to_video", {"text": "Hi.", "avatar": "nobody", "avatar_choice": PHOTO}, stack.credentials))
    assert "no avatar 'gone'" in error_of(plugin.invoke(
        "audio_to_video", {"audio_url": "https://x.example/a.wav", "avatar_choice": "gone"}, stack.credentials))
    both_samples = error_of(plugin.invoke("text_to_video", {"text": "Hi.", "avatar": "astronaut (SAMPLE)"},
                                          stack.credentials))  # both samples have this name
    assert "could be 2 different avatars" in both_samples and "Give the id" in both_samples, both_samples
    assert "no voice 'nobody'" in error_of(
        plugin.invoke("text_to_video", {"text": "Hi.", "voice_choice": "nobody"}, stack.credentials))
    photo = dify_file(f"{stack.receiver_base}/face.png", "anna.png", "image/png", "image")
    assert "not both" in error_of(plugin.invoke("create_avatar", {"file": photo, "url": "https://x.example/a.png",
                                                                  "name": "Twice"}, stack.credentials))
    assert "whole https:// link" in error_of(
        plugin.invoke("create_avatar", {"url": "face.png", "name": "Nowhere"}, stack.credentials))
    assert "not a job id" in error_of(plugin.invoke("get_video", {"job_id": "../etc"}, stack.credentials))
    failed = error_of(plugin.invoke("text_to_video", {"text": "Hi.", "voice": "no-such-voice", "avatar": PHOTO},
                                    stack.credentials))  # refused before any render
    assert "no voice 'no-such-voice'" in failed, failed
    assert plugin.alive and plugin.validate(stack.credentials).error is None


def test_bridge_going_down_mid_job_is_reported(plugin: PluginProcess, stack: Stack) -> None:
    unserved = {**stack.env, "BRIDGE_QUEUE": "unserved"}  # no worker: the job waits until the bridge dies
    with contextlib.ExitStack() as exit_stack:
        base = exit_stack.enter_context(run_bridge_serve(unserved, stack.root / "serve-doomed.log"))
        credentials = {**stack.credentials, "bridge_url": base}

        def kill_soon() -> None:
            time.sleep(3)
            exit_stack.close()

        threading.Thread(target=kill_soon, daemon=True).start()
        reply = plugin.invoke("text_to_video", {"text": "Anyone there?", "avatar": PHOTO, "max_wait_s": 60},
                              credentials)
    assert f"Cannot reach the bridge at {base}" in error_of(reply)
    assert plugin.alive and plugin.validate(stack.credentials).error is None


# --- Dify's limits: the file cap, pending jobs, polling --------------------------------------------


def declared_outputs(tool: str) -> set[str]:
    """The output variables a tool declares to Dify (its yaml's output_schema): what a workflow can refer to."""
    return set(tool_specs()[tool]["output_schema"]["properties"])


def test_above_the_file_cap_the_link_comes_back_and_says_why(plugin: PluginProcess, stack: Stack) -> None:
    capped = plugin.invoke("text_to_video", {"text": "A little too big for this Dify.", "avatar": PHOTO},
                           {**stack.credentials, "max_file_mb": "0.01"})
    assert reply_ok(capped) and capped.blobs == []
    variables = capped.variables
    assert set(variables) == declared_outputs("text_to_video") and variables["duration_s"] > 0
    assert capped.links == [variables["video_url"]]
    [why] = [text for text in capped.texts if "only its link is returned" in text]
    assert '"Largest video sent as a file (MB)" (0.01 MB)' in why and "PLUGIN_MAX_FILE_SIZE" in why, why
    # Unset, the cap is Dify's default (50 MB): the same video comes back as a file.
    fetched = plugin.invoke("get_video", {"job_id": variables["job_id"]}, stack.credentials)
    assert reply_ok(fetched) and len(fetched.blobs) == 1
    assert requests.get(variables["video_url"], timeout=30).content == fetched.blobs[0][0]
    # A setting that is no size is refused when the admin saves it, with what to enter instead.
    refused = error_of(plugin.validate({**stack.credentials, "max_file_mb": "50MB"}))
    assert "Largest video sent as a file" in refused and "PLUGIN_MAX_FILE_SIZE" in refused, refused
    assert plugin.validate({**stack.credentials, "max_file_mb": "50"}).error is None


def test_a_pending_job_gives_every_output_variable_empty(plugin: PluginProcess, stack: Stack) -> None:
    polls: list[str] = []

    def answered(method: str, path: str, response: requests.Response) -> None:
        if method == "GET" and re.fullmatch(r"/v1/jobs/[0-9a-f]+", path):
            polls.append(path)

    unserved = {**stack.env, "BRIDGE_QUEUE": "pending-variables"}  # no worker: the job stays queued
    with run_bridge_serve(unserved, stack.root / "serve-pending.log") as base, run_relay(base, answered) as relay:
        credentials = {**stack.credentials, "bridge_url": relay}
        waiting = plugin.invoke("text_to_video", {"text": "Not yet.", "avatar": PHOTO, "max_wait_s": 5},
                                credentials)
        assert reply_ok(waiting) and waiting.blobs == [] and waiting.links == []
        # Polls back off: 0.5 s, 0.75 s, 1.1 s, 1.7 s, then what is left of the 5 s (a 0.5 s step made 10).
        assert 1 <= len(polls) <= 5, polls
        job_id = waiting.variables["job_id"]
        empty = {"job_id": job_id, "video_url": "", "duration_s": 0, "poster_url": "", "subtitles_url": ""}
        assert waiting.variables == empty and set(empty) == declared_outputs("text_to_video")
        later = plugin.invoke("get_video", {"job_id": job_id}, credentials)
    assert reply_ok(later) and later.variables == empty and set(empty) == declared_outputs("get_video")
    assert any(f"job id is {job_id}" in text for text in later.texts), later.texts
