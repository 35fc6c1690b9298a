"""The curl walk-through in bridge/README.md ("By hand, with curl"), run as written so it never goes stale.

Its ``sh`` blocks run one after another in one bash, as typed into one terminal (variables and functions carry
over), with real curl and jq, against ``python -m bridge serve`` (gunicorn), a real worker and redis-server
started here. The only change made to them is the bridge's port, in the one line that sets ``BRIDGE``. Each
block's outcome is checked as a user would see it: what it printed, the file it saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import pytest
from skimage import data as skdata

from bridge.auth import SCOPES
from bridge.keys import KeyStore, parse_api_key
from tests.bridge_fixtures import REPO, RedisServer, served_bridge
from tests.conftest import ffprobe
from tests.standins.render_gate import RenderGate

README = REPO / "bridge" / "README.md"
SECTION = "## By hand, with curl"
BASE_LINE = "BRIDGE=http://127.0.0.1:8808"
STEP_TIMEOUT_S = 300.0
"""A bound on one block (a render on a loaded 2-core machine included), so a hung step fails instead of hanging."""


def walkthrough() -> list[str]:
    """The ``sh`` blocks of the README's curl section, in order."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.S | re.M)


@dataclass(frozen=True)
class Step:
    script: str
    rc: int
    out: str
    err: str


class Shell:
    """One interactive-like bash: each step is sourced, so what it sets stays for the next, as in a terminal."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch, self.count = scratch, 0
        scratch.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def run(self, script: str, timeout_s: float = STEP_TIMEOUT_S) -> Step:
        self.count += 1
        files = {part: self.scratch / f"{self.count}.{part}" for part in ("sh", "out", "err")}
        files["sh"].write_text(script)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"source {files['sh']} > {files['out']} 2> {files['err']} < /dev/null; "
                                 'echo "step-done $?"\n')
        self.process.stdin.flush()
        if not select.select([self.process.stdout], [], [], timeout_s)[0]:
            self.close()
            pytest.fail(f"step {self.count} did not end within {timeout_s} s:\n{script}\nprinted so far:\n"
                        f"{files['out'].read_text()}{files['err'].read_text()}")
        rc = int(self.process.stdout.readline().split()[1])
        return Step(script, rc, files["out"].read_text(), files["err"].read_text())

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass(frozen=True)
class Stack:
    base: str
    root: Path
    keys: KeyStore
    gate: RenderGate


@dataclass
class Walk:
    shell: Shell
    cwd: Path
    stack: Stack

    def value(self, variable: str) -> str:
        """A shell variable's value: the test's own look, not a README step."""
        return self.shell.run(f'printf %s "${{{variable}:-}}"').out

    def secret(self) -> str:
        return self.value("TALKING_HEAD_API_KEY").split("_", 2)[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("bridge")
    with served_bridge(root, redis_server.url, storage, reaper_interval_s=0.5) as served:
        yield Stack(served.base, root, KeyStore(served.settings.keys_path), served.gate)


@pytest.fixture
def walk(stack: Stack, tmp_path: Path) -> Iterator[Walk]:
    """A fresh terminal on the bridge host, in a directory that looks like the repository root to the README's
    commands (its ``.venv`` is the repository's, not yet active) and holds a photo to upload."""
    cwd = tmp_path / "terminal"
    cwd.mkdir()
    (cwd / ".venv").symlink_to(REPO / ".venv")
    iio.imwrite(cwd / "photo.jpg", skdata.astronaut())
    venv_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BRIDGE_") and k not in {"VIRTUAL_ENV", "TALKING_HEAD_API_KEY", "PYTHONPATH"}}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["BRIDGE_STORAGE_ROOT"] = str(stack.root)  # the bridge host's settings: keys create writes its keys file
    shell = Shell(cwd, env, tmp_path / "steps")
    try:
        yield Walk(shell, cwd, stack)
    finally:
        shell.close()


def as_run(block: str, stack: Stack) -> str:
    """The block as typed, but for the port the test's bridge listens on."""
    return block.replace(BASE_LINE, f"BRIDGE={stack.base}")


def json_then_lines(text: str) -> tuple[Any, list[str]]:
    """A JSON document at the start of ``text``, and the non-empty lines after it."""
    doc, end = json.JSONDecoder().raw_decode(text.lstrip())
    return doc, [line for line in text.lstrip()[end:].splitlines() if line.strip()]


def json_docs(text: str) -> list[Any]:
    docs: list[Any] = []
    while text.strip():
        doc, rest = json_then_lines(text)
        docs.append(doc)
        text = "\n".join(rest)
    return docs


def check_setup(walk: Walk, step: Step) -> None:
    assert step.out == ""  # the key goes into the variable, never on screen
    kid = parse_api_key(walk.value("TALKING_HEAD_API_KEY"))[0]
    assert kid in {key.kid for key in walk.stack.keys.list()}


def check_whoami(walk: Walk, step: Step) -> None:
    ready, who = json_docs(step.out)
    assert ready["status"] == "ok"
    assert (who["sub"], sorted(who["scopes"]), who["admin"]) == ("cli", sorted(SCOPES), False)


def check_voices_and_avatars(walk: Walk, step: Step) -> None:
    rows = [line.split("\t") for line in step.out.splitlines()]
    voices = [row[0] for row in rows if len(row) == 2]
    avatars = {row[0]: row[1] for row in rows if len(row) == 3}
    assert "en-us" in voices and "af" not in voices  # English ones only: eSpeak's Afrikaans is left out
    assert avatars.get("astronaut-photo") == "ready" and avatars.get("astronaut") == "ready"


def check_submit(walk: Walk, step: Step) -> None:
    job = json.loads(step.out)
    assert job["status"] == "queued" and job["kind"] == "render"
    assert walk.value("JOB") == job["id"]


def check_poll(walk: Walk, step: Step) -> None:
    *progress, last = step.out.splitlines()
    assert progress and all(line.split()[0] in {"queued", "running", "succeeded"} for line in progress)
    assert json.loads(last) == {"status": "succeeded", "error": None}


def check_download(walk: Walk, step: Step) -> None:
    video = walk.cwd / "hello.mp4"
    streams = {s["codec_type"]: s["codec_name"] for s in ffprobe(video)["streams"]}
    assert streams == {"video": "h264", "audio": "aac"}


def check_list(walk: Walk, step: Step) -> None:
    assert step.out.splitlines()[0].split("\t")[:2] == [walk.value("JOB"), "succeeded"]


def check_cancel(walk: Walk, step: Step) -> None:
    answer = json.loads(step.out)
    assert answer["status"] == "canceled" and answer["error"]["code"] == "canceled"


def check_avatar(walk: Walk, step: Step) -> None:
    created, lines = json_then_lines(step.out)
    assert created["avatar"]["name"] == "Anna" and created["job"]["kind"] == "avatar"
    assert json.loads(lines[-2]) == {"status": "succeeded", "error": None}
    assert lines[-1] == "204"
    assert created["avatar"]["id"] not in walk.shell.run(  # the test's own look: it is gone
        'curl -sS -H "Authorization: Bearer $(python -m bridge token)" "$BRIDGE/v1/avatars"').out


def check_forgotten_content_type(walk: Walk, step: Step) -> None:
    problem = json.loads(step.out)
    assert (problem["status"], problem["code"]) == (415, "unsupported_media_type")
    assert problem["accepted"] == ["application/json", "multipart/form-data"]
    assert "application/x-www-form-urlencoded" in problem["detail"]


STEPS: list[tuple[str, Callable[[Walk, Step], None]]] = [
    # (what the block must contain, what its outcome must be)
    ("python -m bridge keys create", check_setup),
    ("/v1/whoami", check_whoami),
    ("/v1/voices", check_voices_and_avatars),
    ('-d \'{"text": "Hello from curl.", "avatar_id": "astronaut-photo"}\'', check_submit),
    ("wait_job()", check_poll),
    ("video_url", check_download),
    ("/v1/jobs?limit=5", check_list),
    ("/cancel", check_cancel),
    ("-F file=@photo.jpg", check_avatar),
    ("-d '{\"text\": \"hi\"}'", check_forgotten_content_type),
]


def test_the_readme_walkthrough_runs_as_written(walk: Walk) -> None:
    blocks = walkthrough()
    assert [marker for marker, _ in STEPS if not any(marker in block for block in blocks)] == []
    assert len(blocks) == len(STEPS), "a block was added to or removed from the walk-through: check it here too"
    assert "\n".join(blocks).count(BASE_LINE) == 1
    steps: list[Step] = []
    for block, (marker, check) in zip(blocks, STEPS, strict=True):
        assert marker in block, f"the walk-through's steps are out of order: expected {marker!r} in\n{block}"
        if marker == "/cancel":  # the render cannot end before the cancel arrives, however fast it is
            with walk.stack.gate.armed():
                step = walk.shell.run(as_run(block, walk.stack))
        else:
            step = walk.shell.run(as_run(block, walk.stack))
        assert (step.rc, step.err) == (0, ""), f"{block}\nexit {step.rc}:\n{step.out}{step.err}"
        check(walk, step)
        steps.append(step)
    secret = walk.secret()
    assert [step.script for step in steps if secret in step.out + step.err] == []
    assert secret not in (walk.stack.root / "serve.log").read_text(errors="replace")


def test_what_a_key_sent_as_the_token_and_a_token_sent_twice_get(walk: Walk) -> None:
    """The slips the walk-through describes in words, made with curl against the served API."""
    assert walk.shell.run(as_run(walkthrough()[0], walk.stack)).rc == 0
    sent_key = walk.shell.run('curl -sS -H "Authorization: Bearer $TALKING_HEAD_API_KEY" "$BRIDGE/v1/whoami"')
    problem = json.loads(sent_key.out)
    assert (problem["status"], problem["code"]) == (401, "api_key_not_token")
    assert sent_key.out.endswith("}\n")  # the shell's prompt comes back on a line of its own
    assert "python -m bridge token" in problem["detail"]
    assert walk.secret() not in sent_key.out + (walk.stack.root / "serve.log").read_text(errors="replace")
    twice = walk.shell.run('T=$(python -m bridge token); for i in 1 2; do '
                           'curl -sS -H "Authorization: Bearer $T" "$BRIDGE/v1/whoami"; echo; done')
    first, second = json_docs(twice.out)
    assert first["sub"] == "cli" and (second["status"], second["code"]) == (401, "replayed")
