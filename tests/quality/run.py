"""Run one case: build its template, render, evaluate, draw its contact sheet.

Each step that the engine may refuse (a face too small, a template it cannot read) becomes a row that says
so, so one bad case never hides the others' figures, before or after the engine's limits change.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from engine import Engine, EngineError, EngineSettings, RenderRequest
from engine.avatars import AvatarStore
from engine.evaluate import EvalReport, evaluate

from .cases import Case
from .report import Row
from .sheet import track_mouth, write_sheet


def misses(report: EvalReport) -> list[str]:
    """The targets of `python -m engine eval` this report misses, in words (empty when it meets them all)."""
    out = []
    if report.peak_r < 0.6:
        out.append(f"r {report.peak_r:.2f} < 0.6")
    if abs(report.lag_frames) > 1:
        out.append(f"lag {report.lag_frames:+d}")
    if report.ssim_above_nose is None:
        out.append("SSIM unknown")
    elif report.ssim_above_nose < 0.98:
        out.append(f"SSIM {report.ssim_above_nose:.3f} < 0.98")
    return out


def _avatar(case: Case, settings: EngineSettings, templates: Path) -> str:
    if case.template is None:
        return case.avatar
    path = case.template(templates, settings)
    return AvatarStore(settings).add(path, avatar_id=f"quality-{case.name}", name=case.what).id


def run_case(case: Case, settings: EngineSettings, engine: Engine, out: Path) -> Row:
    """Render ``case`` into ``out`` and judge it; never raises for what the engine refuses."""
    templates = out / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    video = out / f"{case.name}.mp4"
    try:
        avatar = _avatar(case, settings, templates)
        result = engine.render(RenderRequest(avatar=avatar, out=video, text=case.text, lang=case.lang))
        report = evaluate(video, settings)
        track = track_mouth(video, settings, report.frames)
    except EngineError as err:
        return Row(case.name, case.what, "refused", f"{err} ({err.code})")
    except Exception as err:  # a crash in one case must not lose the others' rows
        traceback.print_exc()
        return Row(case.name, case.what, "error", f"{type(err).__name__}: {err}")
    render_s = result.timings.get("total", 0.0)
    missed = misses(report)
    sheet = write_sheet(
        track, out / f"{case.name}.png", f"{case.name}: {case.what}",
        f"{result.duration_s:.1f} s, {result.width}x{result.height}, r {report.peak_r:.2f}, lag {report.lag_frames:+d},"
        f" SSIM {report.ssim_above_nose}, open std {report.mouth_open_std:.3f}  (bar: speech envelope)")
    return Row(case.name, case.what, "fail" if missed else "pass", "; ".join(missed),
               duration_s=round(result.duration_s, 2), render_s=round(render_s, 2),
               realtime_factor=round(render_s / max(result.duration_s, 1e-9), 2), peak_r=report.peak_r,
               lag_frames=report.lag_frames, ssim_above_nose=report.ssim_above_nose,
               mouth_open_std=report.mouth_open_std, video=video.name, sheet=sheet.name)
