"""Build ``dist/<name>-<version>.difypkg`` from the repo root the way ``dify plugin package`` does.

The Go CLI is not installed here, so this reproduces its steps: validate the manifest with the rules the
plugin daemon enforces at install time, walk the tree honouring ``.difyignore`` (``.gitignore`` when there is
none), and write a deflate zip sorted by path, refusing more than the daemon's 50 MiB uncompressed limit.
Every file goes in with the bytes it has in the tree, as the CLI writes it, so both build the same package
and the daemon gives both the same checksum (the one ``scripts/pin_dsl.py`` writes into the example apps).
It is stricter than the CLI where the CLI would produce a package that fails later (missing files, a plugin
that declares several kinds of provider, a packaged ``pyproject.toml``, a readme Dify would not show).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pathspec
import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.yaml"
# `dify plugin package --max-size 50` counts MiB; the daemon's MAX_PLUGIN_PACKAGE_SIZE default is the same 52428800.
MAX_PACKAGE_BYTES = 50 * 1024 * 1024

# Go's regexp classes are ASCII-only, hence re.ASCII.
AUTHOR_RE = re.compile(r"[a-z0-9_-]{1,64}", re.ASCII)
NAME_RE = re.compile(r"[a-z0-9_-]{1,128}", re.ASCII)
VERSION_RE = re.compile(r"\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?", re.ASCII)
# The forms Go's uuid.Parse accepts that can also pass AUTHOR_RE.
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", re.ASCII)
RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
TAGS = frozenset({
    "search", "image", "videos", "weather", "finance", "design", "travel", "social", "news", "medical",
    "productivity", "education", "business", "entertainment", "utilities", "agent", "rag", "other", "trigger",
})
ARCHES = frozenset({"amd64", "arm64"})
LOCALES = ("en_US", "zh_Hans", "ja_JP", "pt_BR")
# The daemon always builds the environment with `uv venv --python 3.12`, whatever the manifest says.
RUNNER = {"language": "python", "version": "3.12", "entrypoint": "main"}
# A tool plugin may declare nothing else: the daemon refuses most mixes, and the SDK would load them too.
OTHER_EXTENSIONS = ("models", "endpoints", "agent_strategies", "datasources", "triggers")
INLINE_DECLARATIONS = ("model", "endpoint", "agent_strategy", "datasource", "trigger")
STORAGE_BYTES = (1024, 1073741824)
# zipfile cannot store Go's zero timestamp; a fixed one keeps builds reproducible.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# The daemon reads the English readme from README.md and the others from readme/ by this name
# (pkg/plugin_packager/decoder/helper.go, AvailableI18nReadme); it skips any other file there.
README = "README.md"
TRANSLATED_README_RE = re.compile(r"README_([a-z]{2}_[A-Za-z]{2,})\.md", re.ASCII)


class PackageError(Exception):
    """The tree cannot become a package; the message says every reason."""


@dataclass(frozen=True)
class Package:
    """A written .difypkg: where it is, its size on disk, the uncompressed total and its entries."""

    path: Path
    size: int
    uncompressed: int
    files: tuple[str, ...]


def load_manifest(root: Path) -> dict[str, Any]:
    """The parsed manifest.yaml, or PackageError when it is missing or not a mapping."""
    path = root / MANIFEST
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{MANIFEST} not found in {root}") from None
    except yaml.YAMLError as exc:
        raise PackageError(f"{MANIFEST} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PackageError(f"{MANIFEST} must be a mapping")
    return data


def validate_manifest(root: Path) -> list[str]:
    """Every problem the daemon (or the SDK at start-up) would find in the plugin at ``root``; empty when none."""
    try:
        manifest = load_manifest(root)
    except PackageError as exc:
        return [str(exc)]
    problems: list[str] = []
    problems += _identity_problems(manifest)
    problems += _text_problems(manifest)
    problems += _asset_problems(root, manifest)
    problems += _resource_problems(manifest)
    problems += _meta_problems(root, manifest)
    problems += _extension_problems(root, manifest)
    return problems


def plugin_files(root: Path, manifest: dict[str, Any]) -> set[str]:
    """The files the manifest points at (directly or through provider and tool yamls) that exist under ``root``."""
    wanted = {MANIFEST, "requirements.txt"}
    runner = _mapping(_mapping(manifest.get("meta")).get("runner"))
    if isinstance(runner.get("entrypoint"), str):
        wanted.add(f"{runner['entrypoint']}.py")
    for key in ("icon", "icon_dark"):
        if isinstance(manifest.get(key), str):
            wanted.add(f"_assets/{manifest[key]}")
    if isinstance(manifest.get("privacy"), str):
        wanted.add(manifest["privacy"])
    for provider_path in _strings(_mapping(manifest.get("plugins")).get("tools")):
        wanted.add(provider_path)
        provider = _load_yaml(root, provider_path)
        identity = _mapping(provider.get("identity"))
        wanted.update(f"_assets/{identity[key]}" for key in ("icon", "icon_dark") if isinstance(identity.get(key), str))
        wanted.update(_python_sources(provider))
        for tool_path in _strings(provider.get("tools")):
            wanted.add(tool_path)
            wanted.update(_python_sources(_load_yaml(root, tool_path)))
    return {posixpath.normpath(path) for path in wanted if _is_file(root, path)}


def ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    """The patterns the packager skips: ``.difyignore``, else ``.gitignore``, else none.

    Dify's packager stops at the first pattern that excludes a path, so a ``!`` re-include never takes effect
    there; refusing them keeps this script and ``dify plugin package`` producing the same file list.
    """
    for name in (".difyignore", ".gitignore"):
        path = root / name
        if path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            lines = [line for line in lines if line and not line.startswith("#")]
            negated = [line for line in lines if line.startswith("!")]
            if negated:
                raise PackageError(f"{name}: Dify's packager ignores re-includes, remove {', '.join(negated)}")
            return pathspec.GitIgnoreSpec.from_lines(lines)
    return pathspec.GitIgnoreSpec.from_lines([])


def collect_files(root: Path) -> list[str]:
    """Paths (posix, relative to ``root``) that go into the package, sorted as the packager sorts them."""
    spec = ignore_spec(root)
    found: list[str] = []
    for current, dirnames, filenames in os.walk(root):
        base = Path(current).relative_to(root).as_posix()
        prefix = "" if base == "." else f"{base}/"
        # An excluded directory is never entered, as in git and the packager: nothing inside it can come back.
        dirnames[:] = [d for d in dirnames if not spec.match_file(f"{prefix}{d}/")]
        found += [f"{prefix}{f}" for f in filenames if not spec.match_file(f"{prefix}{f}")]
    return sorted(found)


def package_name(manifest: dict[str, Any]) -> str:
    """``<name>-<version>.difypkg``: what the issue asks for, keyed on the manifest's identity."""
    return f"{manifest['name']}-{manifest['version']}.difypkg"


def build_package(root: Path = REPO, out_dir: Path | None = None, max_bytes: int = MAX_PACKAGE_BYTES) -> Package:
    """Validate, collect and zip the plugin at ``root`` into ``out_dir`` (default ``root/dist``)."""
    problems = validate_manifest(root)
    if problems:
        raise PackageError("manifest problems:\n  " + "\n  ".join(problems))
    manifest = load_manifest(root)
    files = collect_files(root)
    _check_contents(root, manifest, files)
    sources = {path: root / path for path in files}
    sizes = {path: source.stat().st_size for path, source in sources.items()}
    total = sum(sizes.values())
    limit = min(max_bytes, MAX_PACKAGE_BYTES)
    if total > limit:
        largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:5]
        listing = "\n  ".join(f"{path}: {size} bytes" for path, size in largest)
        raise PackageError(f"{total} bytes uncompressed is over the {limit}-byte limit; largest files:\n  {listing}")
    out_dir = out_dir if out_dir is not None else root / "dist"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package_name(manifest)
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            entry = zipfile.ZipInfo(path, date_time=ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o100644 << 16
            archive.writestr(entry, sources[path].read_bytes())
    partial.replace(target)
    return Package(path=target, size=target.stat().st_size, uncompressed=total, files=tuple(files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="plugin directory (default: the repo root)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write the package (default: ROOT/dist)")
    parser.add_argument("--max-size", type=int, default=50, help="largest uncompressed size in MiB (at most 50)")
    args = parser.parse_args(argv)
    try:
        package = build_package(args.root.resolve(), args.out_dir, args.max_size * 1024 * 1024)
    except PackageError as exc:
        print(f"package_plugin: {exc}", file=sys.stderr)
        return 1
    shown = os.path.relpath(package.path) if package.path.is_relative_to(Path.cwd()) else str(package.path)
    print(f"{shown}  {package.size} bytes, {len(package.files)} files ({package.uncompressed} bytes uncompressed)")
    return 0


def _identity_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    version = manifest.get("version")
    if not (isinstance(version, str) and VERSION_RE.fullmatch(version)):
        problems.append(f"version {version!r} must look like 1.2.3 or 1.2.3-beta1 (three numbers, an optional tag)")
    if manifest.get("type") != "plugin":
        problems.append(f"type {manifest.get('type')!r} must be 'plugin'")
    author = manifest.get("author")
    if not (isinstance(author, str) and AUTHOR_RE.fullmatch(author)):
        problems.append(f"author {author!r} must match ^[a-z0-9_-]{{1,64}}$ (lowercase)")
    elif UUID_RE.fullmatch(author):
        problems.append(f"author {author!r} must not be a UUID: the daemon takes UUID authors for remote debug plugins")
    name = manifest.get("name")
    if not (isinstance(name, str) and NAME_RE.fullmatch(name)):
        problems.append(f"name {name!r} must match ^[a-z0-9_-]{{1,128}}$")
    repo = manifest.get("repo")
    if repo is not None and not (isinstance(repo, str) and urlparse(repo).scheme and urlparse(repo).netloc):
        problems.append(f"repo {repo!r} must be a URL")
    return problems


def _text_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("label", "description"):
        text = manifest.get(key)
        if not isinstance(text, dict) or not isinstance(text.get("en_US"), str) or not text["en_US"]:
            problems.append(f"{key}.en_US is required")
            continue
        for locale in LOCALES:
            value = text.get(locale)
            if value is not None and (not isinstance(value, str) or len(value) >= 1024):
                problems.append(f"{key}.{locale} must be text under 1024 characters")
    created = manifest.get("created_at")
    if isinstance(created, datetime):
        if created.tzinfo is None:
            problems.append("created_at needs a time zone (RFC 3339)")
    elif not (isinstance(created, str) and RFC3339_RE.fullmatch(created) and _parses(created)):
        problems.append(f"created_at {created!r} must be an RFC 3339 time such as 2026-01-31T12:00:00Z")
    tags = manifest.get("tags", [])
    if not isinstance(tags, list):
        problems.append("tags must be a list")
    else:
        known = ", ".join(sorted(TAGS))
        problems += [f"tag {tag!r} is not one of Dify's tags: {known}" for tag in tags if tag not in TAGS]
    return problems


def _asset_problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("icon", "icon_dark"):
        icon = manifest.get(key)
        if icon is None and key == "icon_dark":
            continue
        if not isinstance(icon, str) or not icon or len(icon) > 128:
            problems.append(f"{key} must name a file in _assets/")
        elif not _is_file(root, f"_assets/{icon}"):
            problems.append(f"{key} _assets/{icon} not found")
    privacy = manifest.get("privacy")
    if not isinstance(privacy, str) or not privacy:
        problems.append("privacy must name the privacy policy file (e.g. PRIVACY.md)")
    elif not _is_file(root, privacy):
        problems.append(f"privacy file {privacy} not found")
    return problems


def _resource_problems(manifest: dict[str, Any]) -> list[str]:
    resource = _mapping(manifest.get("resource"))
    memory = resource.get("memory")
    problems = []
    if not (isinstance(memory, int) and not isinstance(memory, bool) and memory > 0):
        problems.append("resource.memory (bytes) is required")
    storage = _mapping(_mapping(resource.get("permission")).get("storage"))
    if storage:
        size = storage.get("size")
        low, high = STORAGE_BYTES
        if not (isinstance(size, int) and low <= size <= high):
            problems.append(f"resource.permission.storage.size must be {low} to {high} bytes")
    return problems


def _meta_problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    meta = _mapping(manifest.get("meta"))
    problems = []
    version = meta.get("version")
    if not (isinstance(version, str) and VERSION_RE.fullmatch(version)):
        problems.append(f"meta.version {version!r} must look like 0.0.1")
    arch = meta.get("arch")
    if not (isinstance(arch, list) and arch and set(arch) <= ARCHES):
        problems.append(f"meta.arch {arch!r} must list amd64 and/or arm64")
    runner = _mapping(meta.get("runner"))
    for key, expected in RUNNER.items():
        if runner.get(key) != expected:
            problems.append(f"meta.runner.{key} {runner.get(key)!r} must be {expected!r}")
    if runner.get("entrypoint") == RUNNER["entrypoint"] and not _is_file(root, f"{RUNNER['entrypoint']}.py"):
        problems.append(f"{RUNNER['entrypoint']}.py (meta.runner.entrypoint) not found")
    return problems


def _extension_problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    plugins = manifest.get("plugins")
    if not isinstance(plugins, dict):
        return ["plugins.tools must list the tool provider yaml"]
    problems = [f"a tool plugin must not also declare plugins.{key}" for key in OTHER_EXTENSIONS if plugins.get(key)]
    problems += [f"a tool plugin must not also declare {key}" for key in INLINE_DECLARATIONS if manifest.get(key)]
    providers = plugins.get("tools")
    if not isinstance(providers, list) or not providers:
        return [*problems, "plugins.tools must list the tool provider yaml"]
    if len(providers) > 1:
        problems.append("plugins.tools lists several providers; the daemon keeps only the last one")
    for provider_path in providers:
        problems += _provider_problems(root, provider_path)
    return problems


def _provider_problems(root: Path, provider_path: Any) -> list[str]:
    if not isinstance(provider_path, str) or not _is_file(root, provider_path):
        return [f"tool provider {provider_path!r} (plugins.tools) not found"]
    provider = _load_yaml(root, provider_path)
    if not provider:
        return [f"{provider_path} is not a YAML mapping"]
    problems = []
    identity = _mapping(provider.get("identity"))
    for key in ("icon", "icon_dark"):
        icon = identity.get(key)
        if (icon is not None or key == "icon") and not (isinstance(icon, str) and _is_file(root, f"_assets/{icon}")):
            problems.append(f"{provider_path}: identity.{key} {icon!r} not found in _assets/")
    problems += [f"{provider_path}: extra.python.source {source} not found"
                 for source in _python_sources(provider) if not _is_file(root, source)]
    tools = provider.get("tools")
    if not isinstance(tools, list) or not tools:
        return [*problems, f"{provider_path}: tools must list the tool yamls"]
    for tool_path in tools:
        if not isinstance(tool_path, str) or not _is_file(root, tool_path):
            problems.append(f"{provider_path}: tool {tool_path!r} not found")
            continue
        tool = _load_yaml(root, tool_path)
        if not tool:
            problems.append(f"{tool_path} is not a YAML mapping")
        problems += [f"{tool_path}: extra.python.source {source} not found"
                     for source in _python_sources(tool) if not _is_file(root, source)]
    return problems


def _check_contents(root: Path, manifest: dict[str, Any], files: list[str]) -> None:
    """Refuse a file list the daemon could not install: a referenced file ignored, or the wrong dependency file."""
    packaged = set(files)
    problems = [f"{path} is referenced by the plugin but excluded by .difyignore"
                for path in sorted(plugin_files(root, manifest) - packaged)]
    if "requirements.txt" not in packaged:
        problems.append("requirements.txt is missing: the daemon installs the plugin's dependencies from it")
    if "pyproject.toml" in packaged:
        problems.append("pyproject.toml would be packaged: the daemon installs from it before requirements.txt")
    problems += _readme_problems(packaged)
    if problems:
        raise PackageError("package contents:\n  " + "\n  ".join(problems))


def _readme_problems(packaged: set[str]) -> list[str]:
    """What would leave Dify's plugin page without its readme: no README.md, or a translation it skips."""
    problems = [] if README in packaged else [f"{README} is missing: Dify shows it on the plugin's page"]
    for path in sorted(p for p in packaged if p.startswith("readme/")):
        name = path.removeprefix("readme/")
        if not TRANSLATED_README_RE.fullmatch(name):
            problems.append(f"{path}: Dify reads only readme/README_<language>.md (such as README_zh_Hans.md)")
    return problems


def _python_sources(declaration: dict[str, Any]) -> list[str]:
    source = _mapping(_mapping(declaration.get("extra")).get("python")).get("source")
    return [source] if isinstance(source, str) else []


def _load_yaml(root: Path, relative: str) -> dict[str, Any]:
    if not _is_file(root, relative):
        return {}
    try:
        data = yaml.safe_load((root / relative).read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _is_file(root: Path, relative: str) -> bool:
    """True for a file inside ``root``; paths that climb out of it count as missing, as in the daemon."""
    path = (root / relative).resolve()
    return path.is_relative_to(root.resolve()) and path.is_file()


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> Iterable[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []




def _parses(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
