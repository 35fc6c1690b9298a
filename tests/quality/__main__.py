"""``python -m tests.quality``: run the `make quality` cases and exit 1 if any misses the targets.

Avatars go into their own store (``<out>/store`` by default), so the quality cases never show up in the
avatar list of the server this checkout runs, and a second run reuses the preprocessed templates.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from engine import Engine, EngineSettings
from engine.samples import ensure_samples

from .cases import CASES
from .report import Row, write_reports
from .run import run_case


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.quality", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/quality"), help="where videos, sheets and reports go")
    p.add_argument("--store", type=Path, help="avatar store (default: <out>/store)")
    p.add_argument("--cases", default=os.environ.get("QUALITY_CASES", ""),
                   help="comma-separated case names (default: all; also QUALITY_CASES): "
                        + ", ".join(c.name for c in CASES))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = set(names) - {c.name for c in CASES}
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    cases = [c for c in CASES if not names or c.name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    settings = EngineSettings(storage_root=(args.store or args.out / "store").resolve())
    began = time.perf_counter()
    ensure_samples(settings)
    engine = Engine(settings)
    header = {"run": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "engine": f"renderer {settings.renderer}, TTS {settings.tts_backend}, faces {settings.face_backend}, "
                        f"min_face_px {settings.min_face_px}"}
    rows: list[Row] = []
    for case in cases:
        started = time.perf_counter()
        rows.append(run_case(case, settings, engine, args.out))
        row = rows[-1]
        print(f"{case.name:18s} {row.status:8s} {time.perf_counter() - started:6.1f} s  {row.message}", flush=True)
        write_reports(rows, header, args.out)
    header["wall time"] = f"{time.perf_counter() - began:.0f} s for {len(rows)} cases"
    write_reports(rows, header, args.out)
    print(f"{sum(r.passed for r in rows)}/{len(rows)} cases meet the targets; see {args.out / 'report.md'}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
