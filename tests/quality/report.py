"""One row per case, and the two files a run leaves behind: report.md for people, report.json for machines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

TARGETS = "peak r >= 0.6, |lag| <= 1 frame, SSIM above the nose >= 0.98 (as `python -m engine eval`)"


@dataclass
class Row:
    """A case's outcome. ``status`` is pass, fail, refused (the engine said no, with ``message``) or error."""

    case: str
    what: str
    status: str
    message: str = ""
    duration_s: float | None = None
    render_s: float | None = None
    realtime_factor: float | None = None
    peak_r: float | None = None
    lag_frames: int | None = None
    ssim_above_nose: float | None = None
    mouth_open_std: float | None = None
    video: str | None = None
    sheet: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _fmt(value: float | int | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _result(row: Row) -> str:
    if row.status in {"refused", "error"}:
        return f"{row.status}: {row.message}".replace("|", "\\|")
    return "pass" if row.passed else f"**FAIL** ({row.message})"


def markdown(rows: list[Row], header: dict[str, str]) -> str:
    lines = ["# `make quality`", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [f"- targets: {TARGETS}", "",
              "| case | duration s | render s | × real time | peak r | lag | SSIM above nose | mouth open std "
              "| result |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.case} | {_fmt(r.duration_s, '.2f')} | {_fmt(r.render_s, '.2f')} | "
                     f"{_fmt(r.realtime_factor, '.2f')} | {_fmt(r.peak_r, '.3f')} | {_fmt(r.lag_frames, '+d')} | "
                     f"{_fmt(r.ssim_above_nose, '.4f')} | {_fmt(r.mouth_open_std, '.4f')} | {_result(r)} |")
    lines += ["", "## Cases", ""]
    lines += [f"- **{r.case}**: {r.what}" + (f" — [video]({r.video}), sheet below" if r.video else "")
              for r in rows]
    lines += ["", "## Contact sheets of the mouth", ""]
    for r in rows:
        if r.sheet:
            lines += [f"### {r.case}", "", f"![{r.case}]({r.sheet})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_reports(rows: list[Row], header: dict[str, str], folder: Path) -> None:
    (folder / "report.md").write_text(markdown(rows, header), encoding="utf-8")
    data = {"header": header, "targets": TARGETS, "all_passed": all(r.passed for r in rows),
            "cases": [asdict(r) for r in rows]}
    (folder / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
