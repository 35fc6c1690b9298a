"""``python -m engine …``: render, manage avatars, list voices, and self-check a video."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EngineError
from .settings import EngineSettings, get_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Talking-head engine")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="text or audio + an avatar → MP4")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="what the avatar says")
    src.add_argument("--audio", type=Path, help="speech to lip-sync (.wav .mp3 .m4a .aac .flac .ogg)")
    r.add_argument("--lang", default="auto", help="auto, en, zh, or an eSpeak language")
    r.add_argument("--voice", help="voice id (see `voices`)")
    r.add_argument("--speed", type=float, default=1.0)
    r.add_argument("--avatar", required=True, help="avatar id, or a template video/photo path")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--resolution", choices=["source", "720p", "1080p"], default="source")
    r.add_argument("--subtitles", action="store_true", help="also write .vtt and .srt beside the video")
    r.add_argument("--burn-subtitles", action="store_true", help="draw the subtitles into the picture")
    r.add_argument("--renderer", choices=["procedural", "wav2lip", "heygem"])
    r.add_argument("--tts", choices=["espeak", "piper", "openai", "heygem"])
    r.add_argument("--json", action="store_true", help="print one JSON object describing the result")

    a = sub.add_parser("avatars", help="manage avatar templates")
    asub = a.add_subparsers(dest="avatars_command", required=True)
    add = asub.add_parser("add", help="preprocess a template once and cache it")
    add.add_argument("path", type=Path)
    add.add_argument("--id", dest="avatar_id")
    add.add_argument("--name")
    add.add_argument("--json", action="store_true")
    ls = asub.add_parser("list")
    ls.add_argument("--json", action="store_true")
    rm = asub.add_parser("delete")
    rm.add_argument("avatar_id")
    asub.add_parser("samples", help="build the sample avatars (done by `make setup`)")

    v = sub.add_parser("voices", help="voices the configured TTS backends offer")
    v.add_argument("--json", action="store_true")

    e = sub.add_parser("eval", help="lip-sync self-check of a rendered video")
    e.add_argument("video", type=Path)
    e.add_argument("--audio", type=Path, help="reference speech (default: the video's own track)")
    e.add_argument("--json", action="store_true")

    hv = sub.add_parser("heygem-voice", help="register a reference voice with HeyGem's TTS and print its settings")
    hv.add_argument("clip", help="the reference recording as HeyGem's TTS container sees it (e.g. a bare name in "
                    "its voice data folder)")
    hv.add_argument("--lang", default="zh", help="language of the recording (HeyGem's client sends zh)")
    hv.add_argument("--json", action="store_true")
    return p


def _progress_printer(enabled: bool):
    last: dict[str, int] = {}

    def report(stage: str, fraction: float) -> None:
        pct = min(100, round(fraction * 5) * 20)
        if enabled and last.get(stage) != pct:
            last[stage] = pct
            print(f"  {stage:8s} {pct:3d}%", file=sys.stderr, flush=True)

    return report


def _render(args: argparse.Namespace, settings: EngineSettings) -> int:
    from .render import Engine, RenderRequest

    req = RenderRequest(avatar=args.avatar, out=args.out, text=args.text, audio=args.audio, lang=args.lang,
                        voice=args.voice, speed=args.speed, resolution=args.resolution,
                        subtitles=args.subtitles, burn_subtitles=args.burn_subtitles, renderer=args.renderer,
                        tts=args.tts)
    result = Engine(settings).render(req, progress=_progress_printer(not args.json))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        t = result.timings
        print(f"{result.video}  ({result.duration_s:.2f} s, {result.width}x{result.height} @ {result.fps:g} fps, "
              f"rendered in {t['total']:.2f} s = {t['total'] / result.duration_s:.2f}x real time)")
        for note in result.notes:
            print(f"note: {note}")
    return 0


def _avatars(args: argparse.Namespace, settings: EngineSettings) -> int:
    from .avatars import AvatarStore

    store = AvatarStore(settings)
    if args.avatars_command == "add":
        avatar = store.add(args.path, avatar_id=args.avatar_id, name=args.name)
        if args.json:
            print(json.dumps(avatar.to_dict(), ensure_ascii=False))
        else:
            print(f"{avatar.id}  {avatar.kind} {avatar.width}x{avatar.height}"
                  + (f" {avatar.duration_s:.1f} s" if avatar.kind == "video" else ""))
            for note in avatar.notes:
                print(f"note: {note}")
    elif args.avatars_command == "list":
        avatars = store.list()
        if args.json:
            print(json.dumps([a.to_dict() for a in avatars], ensure_ascii=False))
        for a in [] if args.json else avatars:
            extra = f"{a.duration_s:5.1f} s" if a.kind == "video" else "  photo"
            print(f"{a.id:32s} {a.width:5d}x{a.height:<5d} {extra}  {a.name}")
    elif args.avatars_command == "delete":
        store.delete(args.avatar_id)
        print(f"deleted {args.avatar_id}")
    else:
        from .samples import ensure_samples

        for avatar in ensure_samples(settings):
            print(f"{avatar.id}  {avatar.kind} {avatar.width}x{avatar.height}")
    return 0


def _voices(args: argparse.Namespace, settings: EngineSettings) -> int:
    from .tts import list_voices

    voices = list_voices(settings)
    if args.json:
        print(json.dumps([{"id": v.id, "name": v.name, "languages": list(v.languages), "backend": v.backend}
                          for v in voices], ensure_ascii=False))
    else:
        for v in voices:
            print(f"{v.backend:8s} {v.id:24s} {','.join(v.languages):12s} {v.name}")
    return 0


def _eval(args: argparse.Namespace, settings: EngineSettings) -> int:
    from .evaluate import evaluate

    report = evaluate(args.video, settings, audio=args.audio)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    ssim = "n/a (template unknown)" if report.ssim_above_nose is None else f"{report.ssim_above_nose:.4f}"
    print(f"frames                {report.frames} @ {report.fps:g} fps")
    print(f"peak Pearson r        {report.peak_r:.3f}   (target >= 0.6)")
    print(f"lag at peak (frames)  {report.lag_frames:+d}      (target |lag| <= 1; + means mouth leads)")
    print(f"SSIM above the nose   {ssim}   (target >= 0.98)")
    print(f"mouth opening         mean {report.mouth_open_mean:.3f}, std {report.mouth_open_std:.3f} (of face height)")
    print("meets targets" if report.meets_targets() else "BELOW TARGET")
    return 0


def _heygem_voice(args: argparse.Namespace, settings: EngineSettings) -> int:
    from .tts.heygem_voice import register_voice

    voice = register_voice(settings, args.clip, args.lang)
    if args.json:
        print(json.dumps({"reference_audio": voice.reference_audio, "reference_text": voice.reference_text},
                         ensure_ascii=False))
    else:
        print("# add to the workers' environment (.env):")
        print("\n".join(voice.env_lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = get_settings()
    handlers = {"render": _render, "avatars": _avatars, "voices": _voices, "eval": _eval,
                "heygem-voice": _heygem_voice}
    try:
        return handlers[args.command](args, settings)
    except EngineError as err:
        if getattr(args, "json", False):
            print(json.dumps({"error": err.to_dict()}, ensure_ascii=False))
        print(f"error: {err}", file=sys.stderr)
        return 2
