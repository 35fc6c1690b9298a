"""`make bench`: speed and memory of the engine, as ratios measured in one run on this machine.

Scenario (issue #2): 10 s of English speech on the 720p25 sample template, warm avatar cache,
default (procedural) renderer. The floor is a plain ffmpeg decode + H.264 encode of the same
number of template frames, timed here in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from engine.avatars import AvatarStore  # noqa: E402
from engine.face import get_backend  # noqa: E402
from engine.samples import VIDEO_ID, ensure_samples  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from engine.tts import get_backend as get_tts  # noqa: E402
from engine.tts.base import SynthesisRequest  # noqa: E402
from engine.video import ffmpeg_exe  # noqa: E402

TEXT = ("Welcome to our product tour. In the next few seconds I will show you how to create a video "
        "from one line of text, right inside your own network, in less time than it takes to watch it.")


def run_render(settings: EngineSettings, out: Path) -> tuple[dict, float, float]:
    """One render in a child process: its JSON report, wall time and peak RSS (MiB)."""
    env = {**os.environ, "ENGINE_STORAGE_ROOT": str(settings.storage_root)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "render", "--text", TEXT, "--lang", "en", "--avatar", VIDEO_ID,
         "--out", str(out), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"render failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return json.loads(stdout), wall, usage.ru_maxrss / 1024


def plain_transcode(template: Path, frames: int, out: Path, settings: EngineSettings) -> float:
    start = time.perf_counter()
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-y", "-v", "error", "-stream_loop", "-1", "-i", str(template),
         "-frames:v", str(frames), "-an", "-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p",
         "-preset", settings.video_preset, "-crf", str(settings.video_crf), "-movflags", "+faststart", str(out)],
        check=True)
    return time.perf_counter() - start


def cold_preprocess(settings: EngineSettings, template: Path, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = settings.model_copy(update={"storage_root": Path(tmp)})
        store = AvatarStore(fresh)
        get_backend(fresh)  # models load once per worker; the figure is per-template work
        start = time.perf_counter()
        store.add(template, avatar_id="bench")
        return (time.perf_counter() - start) / seconds


def wav2lip_fps() -> float:
    import torch

    from engine.lipsync.wav2lip import generator_fps

    torch.set_num_threads(os.cpu_count() or 1)
    return generator_fps(batch_size=16, batches=3, device="cpu")


def main() -> int:
    settings = EngineSettings()
    ensure_samples(settings)
    store = AvatarStore(settings)
    avatar = store.get(VIDEO_ID)
    template = settings.avatars_dir / VIDEO_ID / "forward.mp4"
    speech_s = get_tts(settings).synthesize(SynthesisRequest(TEXT, "en")).duration

    with tempfile.TemporaryDirectory() as tmp:
        run_render(settings, Path(tmp) / "warmup.mp4")
        report, wall, rss = run_render(settings, Path(tmp) / "bench.mp4")
        floor = plain_transcode(template, report["n_frames"], Path(tmp) / "floor.mp4", settings)
    cold = cold_preprocess(settings, template, avatar.duration_s)
    gen_fps = wav2lip_fps()

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    t = report["timings"]
    total, duration = t["total"], report["duration_s"]
    rows = [
        ("speech (s)", f"{speech_s:.2f}", ""),
        ("video (s)", f"{duration:.2f}", f"{report['n_frames']} frames, {report['width']}x{report['height']}"),
    ]
    rows += [(f"stage {k} (s)", f"{v:.3f}", "") for k, v in t.items() if k != "total"]
    rows += [
        ("render total (s)", f"{total:.2f}", f"process wall {wall:.2f} s incl. interpreter start"),
        ("x real time", f"{duration / total:.2f}x", "target >= 2x  " + verdict(duration / total >= 2)),
        ("plain ffmpeg transcode (s)", f"{floor:.2f}", "decode + H.264 encode of the same frames"),
        ("render / transcode", f"{total / floor:.2f}", "target <= 1.5  " + verdict(total / floor <= 1.5)),
        ("peak RSS (MiB)", f"{rss:.0f}", "target <= 1024  " + verdict(rss <= 1024)),
        ("cold preprocessing (s per s)", f"{cold:.2f}", "target <= 1  " + verdict(cold <= 1)),
        ("Wav2Lip generator (frames/s)", f"{gen_fps:.1f}", "CPU, random weights, batch 16"),
    ]
    print(f"engine benchmark on {os.cpu_count()} cores")
    for name, value, note in rows:
        print(f"  {name:32s} {value:>10s}   {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
