"""Pin the example DSLs (dify_plugin/examples) to the exact .difypkg you install.

Dify lists the plugin an app needs under ``dependencies`` as ``author/name:version@checksum``. After an
import it compares that string with what the workspace has installed; any difference (another build, a
signed copy, not installed) makes it open an "Install plugins" dialog that cannot fetch a local package.
Running this on the package you install makes the strings equal, so the import asks nothing.

    python scripts/pin_dsl.py dist/talking_head-0.1.0.difypkg [DSL.yml ...] [--out-dir DIR]

With no DSL files it takes both examples; with ``--out-dir`` it writes pinned copies there and leaves
the originals alone (what `make package` does, into dist/). It prints the identifier it wrote.
The checksum is the plugin daemon's: SHA-256 over, for every entry of the zip sorted by path, the SHA-256
of the path followed by the SHA-256 of the content. Signing adds an entry, so pin the file you upload.
"""

from __future__ import annotations

import argparse
import hashlib
import posixpath
import re
import shutil
import sys
import zipfile
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "dify_plugin" / "examples"
EXAMPLES = (EXAMPLES_DIR / "talking_head_workflow.yml", EXAMPLES_DIR / "talking_head_agent.yml")
# The daemon's pattern for a plugin unique identifier (pkg/entities/plugin_entities/identity.go).
IDENTIFIER_RE = re.compile(
    r"^(?:([a-z0-9_-]{1,64})/)?([a-z0-9_-]{1,255}):([0-9]{1,4})(\.[0-9]{1,4}){1,3}(-\w{1,16})?@[a-f0-9]{32,64}$")


def _manifest_field(text: str, key: str) -> str:
    """A top-level scalar of manifest.yaml, without needing a YAML library."""
    match = re.search(rf"^{key}:[ \t]*['\"]?([^'\"\s#]+)", text, re.MULTILINE)
    if not match:
        raise ValueError(f"manifest.yaml has no top-level {key!r}")
    return match.group(1)


def checksum(archive: zipfile.ZipFile) -> str:
    digests: dict[str, bytes] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = posixpath.normpath(info.filename)
        digests[name] = hashlib.sha256(archive.read(info)).digest()
    joined = b"".join(hashlib.sha256(name.encode()).digest() + digests[name] for name in sorted(digests))
    return hashlib.sha256(joined).hexdigest()


def identifier(package: Path) -> str:
    """``author/name:version@checksum`` of a .difypkg, as the plugin daemon computes it."""
    with zipfile.ZipFile(package) as archive:
        manifest = archive.read("manifest.yaml").decode("utf-8")
        author, name, version = (_manifest_field(manifest, key) for key in ("author", "name", "version"))
        result = f"{author}/{name}:{version}@{checksum(archive)}"
    if not IDENTIFIER_RE.fullmatch(result):
        raise ValueError(f"{result!r} is not a valid plugin identifier")
    return result


def pin(dsl: Path, new_identifier: str) -> bool:
    """Replace this plugin's identifier in ``dsl``; True when it changed."""
    plugin_id = new_identifier.split(":", 1)[0]
    pattern = re.compile(rf"(plugin_unique_identifier:[ \t]*['\"]?){re.escape(plugin_id)}:[^\s'\"]+")
    text = dsl.read_text(encoding="utf-8")
    updated, count = pattern.subn(lambda m: m.group(1) + new_identifier, text)
    if count == 0:
        raise ValueError(f"{dsl} has no dependency on {plugin_id}")
    if updated != text:
        dsl.write_text(updated, encoding="utf-8")
    return updated != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the .difypkg you install (the .signed one if you sign)")
    parser.add_argument("dsl", type=Path, nargs="*", help="DSL files to rewrite (default: both examples)")
    parser.add_argument("--out-dir", type=Path, default=None, help="write pinned copies here instead")
    args = parser.parse_args(argv)
    try:
        new = identifier(args.package)
        for dsl in args.dsl or EXAMPLES:
            if args.out_dir is not None:
                args.out_dir.mkdir(parents=True, exist_ok=True)
                target = args.out_dir / dsl.name
                shutil.copyfile(dsl, target)
                dsl = target
            print(f"{dsl}: {'pinned' if pin(dsl, new) else 'already pinned'}")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        print(f"pin_package: {exc}", file=sys.stderr)
        return 1
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
