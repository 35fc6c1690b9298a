"""The ComfyUI node pack (comfyui/) in a real ComfyUI, through its HTTP API: the API-format examples are
queued with POST /prompt, followed on /history/{id}, and the saved MP4s fetched from /view and checked
with ffprobe and the engine's own lip-sync self-check, against the engine CLI on the same input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from skimage import data as skdata

from tests.comfyui_server import SNAPSHOT, VENV_PYTHON, ComfyUI, comfyui_home, run_comfyui
from tests.conftest import REPO, ffprobe

EXAMPLES = REPO / "comfyui" / "examples"
HOME = comfyui_home()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(HOME is None, reason=f"no ComfyUI: $COMFYUI_DIR is unset and {SNAPSHOT} does not exist"),
]


SCREENSHOTS = REPO / "out" / "comfyui"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.api.json").read_text())


def write_inputs(folder: Path) -> None:
    """The pictures the examples name: two usable faces (the sample portrait, mirrored and cropped) and a
    photo of a coffee cup, which has none."""
    face = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "lecturer-a.png"), face)
    cv2.imwrite(str(folder / "lecturer-b.png"), cv2.flip(face, 1))
    cv2.imwrite(str(folder / "lecturer-c.png"), face[16:496, 32:480])
    cv2.imwrite(str(folder / "no-face.png"), cv2.cvtColor(skdata.coffee(), cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def comfy(storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyUI]:
    assert HOME is not None
    if not VENV_PYTHON.exists():
        pytest.fail(f"{VENV_PYTHON} is missing: run `make comfyui-setup` (make test does)")
    base = tmp_path_factory.mktemp("comfyui")
    (base / "input").mkdir()
    write_inputs(base / "input")
    with run_comfyui(HOME, base, {"ENGINE_STORAGE_ROOT": str(storage)}) as server:
        yield server


def saved_files(entry: dict) -> dict[str, list[dict]]:
    """Node id → the files it saved, as listed in the prompt's history."""
    return {node: [item for item in output.get("images", []) if item.get("type") == "output"]
            for node, output in entry["outputs"].items() if output.get("images")}


def evaluate(video: Path, storage: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "engine", "eval", str(video), "--json"], capture_output=True,
                          text=True, timeout=300, check=True, env={**os.environ, "ENGINE_STORAGE_ROOT": str(storage)})
    return json.loads(done.stdout)


def check_mp4(video: Path) -> None:
    codecs = {s["codec_type"]: s["codec_name"] for s in ffprobe(video)["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}, codecs


def run_example(comfy: ComfyUI, workflow: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    entry = comfy.wait(comfy.queue(workflow))
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy.tail())
    return entry, time.perf_counter() - started


def test_text_example_renders_in_sync_like_the_cli(comfy: ComfyUI, storage: Path, tmp_path: Path) -> None:
    workflow = example("text_to_video")
    entry, seconds = run_example(comfy, workflow)
    [[item]] = saved_files(entry).values()
    video = comfy.fetch(item, tmp_path / "comfyui.mp4")
    check_mp4(video)
    ours = evaluate(video, storage)
    assert ours["peak_r"] >= 0.6 and abs(ours["lag_frames"]) <= 1, ours

    speech = workflow["1"]["inputs"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "render", "--text", speech["text"], "--lang", speech["language"],
                    "--avatar", workflow["2"]["inputs"]["saved_avatar"], "--out", str(tmp_path / "cli.mp4")],
                   check=True, capture_output=True, timeout=300,
                   env={**os.environ, "ENGINE_STORAGE_ROOT": str(storage)})
    cli_seconds = time.perf_counter() - started
    cli = evaluate(tmp_path / "cli.mp4", storage)
    assert ours["frames"] == cli["frames"]
    assert abs(ours["peak_r"] - cli["peak_r"]) <= 0.02 and ours["lag_frames"] == cli["lag_frames"], (ours, cli)
    duration = float(ffprobe(video)["format"]["duration"])
    print(f"\n{duration:.2f} s video: POST /prompt → saved file {seconds:.2f} s; engine CLI {cli_seconds:.2f} s; "
          f"r {ours['peak_r']:.3f} (CLI {cli['peak_r']:.3f}), lag {ours['lag_frames']} (CLI {cli['lag_frames']})")


def test_one_speech_three_avatars(comfy: ComfyUI, storage: Path, tmp_path: Path) -> None:
    entry, _ = run_example(comfy, example("one_speech_three_avatars"))
    saved = [item for items in saved_files(entry).values() for item in items]
    assert len(saved) == 3
    for i, item in enumerate(saved):
        video = comfy.fetch(item, tmp_path / f"{i}.mp4")
        check_mp4(video)
        report = evaluate(video, storage)
        assert report["peak_r"] >= 0.6 and abs(report["lag_frames"]) <= 1, report


def test_batch_skips_the_image_without_a_face(comfy: ComfyUI, tmp_path: Path) -> None:
    workflow = example("batch_face_check")
    entry, _ = run_example(comfy, workflow)
    saved = {node: items for node, items in saved_files(entry).items()}
    savers = {node for node, spec in workflow.items() if spec["class_type"] == "SaveVideo"}
    loads = {node: spec["inputs"]["image"] for node, spec in workflow.items() if spec["class_type"] == "LoadImage"}
    prefixes = {workflow[node]["inputs"]["filename_prefix"] for node in saved}
    assert len(saved) == 2 and set(saved) < savers, saved
    assert prefixes == {"talking_head/batch-1", "talking_head/batch-3"}
    for node, items in saved.items():
        check_mp4(comfy.fetch(items[0], tmp_path / f"{node}.mp4"))
    verdicts = {node: entry["outputs"][node]["text"][0] for node, spec in workflow.items()
                if spec["class_type"] == "TalkingHeadFaceCheck"}
    skipped = [text for text in verdicts.values() if "skipped" in text]
    assert len(skipped) == 1 and skipped[0].startswith("no-face.png: skipped") and "face" in skipped[0], verdicts
    assert sorted(loads.values()) == ["lecturer-a.png", "lecturer-c.png", "no-face.png"]


def test_ui_example_loads_in_the_browser(comfy: ComfyUI) -> None:
    """Each UI-format example loads on ComfyUI's canvas in headless Chromium (Debian's); the PNGs land in
    out/comfyui/ to look at (the README shows the text example's)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("text_to_video", "batch_face_check"):
        out = SCREENSHOTS / f"{name}.png"
        out.unlink(missing_ok=True)
        subprocess.run([str(VENV_PYTHON), str(REPO / "tests" / "comfyui_screenshot.py"), comfy.url,
                        str(EXAMPLES / f"{name}.json"), str(out)], check=True, timeout=240)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
