"""bridge.media_check: ffprobe decides what an upload is, and refuses what the engine should never see."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from bridge.media_check import CheckedMedia, MediaLimits, check_media
from engine.errors import CorruptMedia, EngineError, MediaTooLong, UnsupportedMedia
from engine.media import validate_audio, validate_template
from tests.bridge_fixtures import was_connected
from tests.conftest import ffmpeg

LIMITS = MediaLimits(max_duration_s=10)
SINE = ("-f", "lavfi", "-i", "sine=frequency=440:duration=3")
PICTURE = ("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real files made with ffmpeg, plus broken and hostile ones."""
    d = tmp_path_factory.mktemp("media")
    ffmpeg(*SINE, str(d / "tone.wav"))
    ffmpeg(*SINE, "-c:a", "libmp3lame", str(d / "tone.mp3"))
    ffmpeg(*SINE, "-c:a", "aac", str(d / "tone.m4a"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=12", str(d / "long.wav"))
    for ext in ("png", "jpg", "webp"):
        ffmpeg(*PICTURE, "-frames:v", "1", str(d / f"face.{ext}"))
    ffmpeg("-f", "lavfi", "-i", "color=size=4200x16", "-frames:v", "1", str(d / "wide.png"))
    clip = (*PICTURE, *SINE, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")
    ffmpeg(*clip, str(d / "clip.mp4"))
    ffmpeg(*clip, "-movflags", "+faststart", str(d / "faststart.mp4"))
    ffmpeg(*PICTURE, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(d / "silent.mp4"))
    for name in ("clip.mp4", "faststart.mp4", "face.jpg"):
        data = (d / name).read_bytes()
        (d / f"half-{name}").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("Hello, this is not a recording.\n" * 20)
    shutil.copy(d / "notes.txt", d / "notes.mp3")  # a misleading name on disk must not steer detection
    shutil.copy(d / "tone.wav", d / "tone-on-disk.mp3")
    return d



@pytest.mark.parametrize(("name", "ext"), [("tone.wav", ".wav"), ("tone.mp3", ".mp3"), ("tone.m4a", ".m4a"),
                                           ("clip.mp4", ".m4a"), ("tone-on-disk.mp3", ".wav")])
def test_valid_audio(media: Path, name: str, ext: str) -> None:
    checked = check_media(media / name, "audio", LIMITS, user_filename=f"upload{ext}")
    assert checked.kind == "audio"
    assert checked.ext == ext, "the stored extension comes from the content"
    assert checked.duration_s == pytest.approx(3, abs=0.1)
    stored = media / f"stored-{name}{checked.ext}"
    shutil.copy(media / name, stored)
    validate_audio(stored, 10)  # what passes here passes the engine's own check later


@pytest.mark.parametrize(("name", "kind", "ext"), [("face.png", "image", ".png"), ("face.jpg", "image", ".jpg"),
                                                   ("face.webp", "image", ".webp"), ("clip.mp4", "video", ".mp4")])
def test_valid_avatar(media: Path, name: str, kind: str, ext: str) -> None:
    checked = check_media(media / name, "avatar", LIMITS, user_filename=name)
    assert (checked.kind, checked.ext, checked.width, checked.height) == (kind, ext, 320, 240)
    assert checked.duration_s == (0 if kind == "image" else pytest.approx(3, abs=0.1))
    stored = media / f"stored-{name}{checked.ext}"
    shutil.copy(media / name, stored)
    validate_template(stored, 10, 3840 * 2160)


def test_result_is_small_and_typed(media: Path) -> None:
    assert check_media(media / "tone.wav", "audio", LIMITS) == CheckedMedia("audio", ".wav", 3.0, 0, 0, "WAV")


def reject(path: Path, expect: str, error: type[EngineError], match: str, **kwargs: object) -> EngineError:
    with pytest.raises(error, match=match) as err:
        check_media(path, expect, kwargs.pop("limits", LIMITS), **kwargs)  # type: ignore[arg-type]
    assert str(err.value).startswith(f"{kwargs.get('field', expect)}: ")
    assert err.value.field == kwargs.get("field", expect)
    return err.value


@pytest.mark.parametrize("name", ["notes.txt", "notes.mp3"])
def test_not_media(media: Path, name: str) -> None:
    err = reject(media / name, "audio", UnsupportedMedia, "is not readable media", user_filename="voice.bin")
    assert "use audio in WAV, MP3, MP4/MOV, AAC, FLAC, Ogg" in str(err)


def test_truncated_mp4_without_index(media: Path) -> None:
    reject(media / "half-clip.mp4", "avatar", CorruptMedia, "incomplete MP4/MOV", user_filename="me.mp4")


def test_truncated_faststart_mp4(media: Path) -> None:
    """Its header is intact, so only counting the packets that are really there shows it is cut."""
    reject(media / "half-faststart.mp4", "avatar", CorruptMedia, "is incomplete: stream 0 has", user_filename="me.mp4")
    reject(media / "half-faststart.mp4", "audio", CorruptMedia, "incomplete")


def test_truncated_jpeg_fails_decoding(media: Path) -> None:
    reject(media / "half-face.jpg", "avatar", CorruptMedia, "could not be decoded", user_filename="me.jpg")


def test_wav_named_mp4(media: Path) -> None:
    err = reject(media / "tone.wav", "audio", UnsupportedMedia, "is named .mp4 but the content is WAV",
                 user_filename="C:\\Users\\me\\voice.mp4", field="audio_url")
    assert str(err).startswith("audio_url: voice.mp4 is named .mp4 ")
    assert "rename it to .wav" in str(err)


def test_unclaiming_user_names_are_fine(media: Path) -> None:
    for name in ("voice", "voice.bin", "../../voice.WAV", "\x1b[31mvoice.wav"):
        assert check_media(media / "tone.wav", "audio", LIMITS, user_filename=name).ext == ".wav"


def test_hls_playlist_is_refused_without_connecting(media: Path, trap: socket.socket, tmp_path: Path) -> None:
    port = trap.getsockname()[1]
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{port}/seg.ts\n"
                        "#EXT-X-ENDLIST\n")
    for expect in ("audio", "avatar"):
        reject(playlist, expect, UnsupportedMedia, "is an HLS playlist, which is not accepted", user_filename="a.m3u8")
    assert not was_connected(trap), "ffprobe must not connect anywhere"


def test_wrong_kind(media: Path) -> None:
    reject(media / "tone.wav", "avatar", UnsupportedMedia,
           r"is in WAV format, which is not accepted as avatar; use a video \(")
    reject(media / "face.png", "audio", UnsupportedMedia, "not accepted as audio")
    reject(media / "silent.mp4", "audio", UnsupportedMedia, "has no audio stream")


def test_too_long(media: Path) -> None:
    err = reject(media / "long.wav", "audio", MediaTooLong, r"is 12\.0 s long; the limit is 10 s",
                 user_filename="speech.wav")
    assert err.code == "media_too_long"


def test_resolution_caps(media: Path) -> None:
    reject(media / "wide.png", "avatar", UnsupportedMedia, "is 4200x16; the limit is")
    reject(media / "face.png", "avatar", UnsupportedMedia, "is 320x240",
           limits=MediaLimits(max_duration_s=10, max_pixels=320 * 240 - 1))


def test_stream_cap(media: Path) -> None:
    reject(media / "clip.mp4", "avatar", UnsupportedMedia, "has 2 streams; at most 1",
           limits=MediaLimits(max_duration_s=10, max_streams=1))


def test_limits_follow_the_engine() -> None:
    from engine import EngineSettings

    settings = EngineSettings(_env_file=None, max_audio_s=42, max_template_pixels=1000)  # type: ignore[call-arg]
    assert MediaLimits.for_engine("audio", settings).max_duration_s == 42
    assert MediaLimits.for_engine("avatar", settings).max_pixels == 1000
