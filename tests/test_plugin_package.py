"""The .difypkg: the daemon's manifest rules, what the package holds, and that it installs and starts in Dify's way."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.dify_daemon import PluginProcess
from scripts.package_plugin import (
    MAX_PACKAGE_BYTES,
    Package,
    PackageError,
    build_package,
    collect_files,
    load_manifest,
    main,
    validate_manifest,
)
from scripts.pin_dsl import identifier
from tests.conftest import REPO

VALID_MANIFEST: dict[str, Any] = {
    "version": "0.1.0",
    "type": "plugin",
    "author": "talking-head",
    "name": "talking_head",
    "label": {"en_US": "Talking Head Video", "zh_Hans": "数字人视频"},
    "description": {"en_US": "Text to a talking-head video."},
    "icon": "icon.svg",
    "resource": {"memory": 268435456, "permission": {"tool": {"enabled": True}}},
    "plugins": {"tools": ["provider/talking_head.yaml"]},
    "meta": {"version": "0.0.1", "arch": ["amd64", "arm64"],
             "runner": {"language": "python", "version": "3.12", "entrypoint": "main"}},
    "created_at": "2026-11-23T00:00:00Z",
    "privacy": "PRIVACY.md",
    "tags": ["videos"],
}
PROVIDER: dict[str, Any] = {
    "identity": {"author": "talking-head", "name": "talking_head", "label": {"en_US": "Talking Head"},
                 "description": {"en_US": "Talking Head"}, "icon": "icon.svg"},
    "tools": ["tools/list_avatars.yaml"],
    "extra": {"python": {"source": "provider/talking_head.py"}},
}
TOOL: dict[str, Any] = {
    "identity": {"name": "list_avatars", "author": "talking-head", "label": {"en_US": "List avatars"}},
    "description": {"human": {"en_US": "List avatars"}, "llm": "List avatars"},
    "parameters": [],
    "extra": {"python": {"source": "tools/list_avatars.py"}},
}
# What may sit at the top of the package: the plugin and nothing else (readme/ holds translated readmes).
PLUGIN_TOP_LEVEL = {"manifest.yaml", "main.py", "requirements.txt", "README.md", "PRIVACY.md",
                    "provider", "tools", "_assets", "readme"}
NOT_THE_PLUGIN = ("bridge/", "engine/", "tests/", "dify_plugin/", "scripts/", "deploy/", "docs/", ".venv", "var/",
                  "out/", "dist/", ".git", ".ci/", ".hypothesis/", ".pytest_cache/", ".ruff_cache/", ".env",
                  "Makefile", "pyproject.toml", ".difyignore")
# The languages of Dify's I18nObject, all filled in as the better official plugins do.
LOCALES = ("en_US", "zh_Hans", "ja_JP", "pt_BR")
MARKDOWN_IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")


def write_plugin(root: Path, manifest: dict[str, Any] | None = None) -> Path:
    """A minimal valid tool plugin at ``root`` (the manifest replaced when given)."""
    files = {
        "manifest.yaml": yaml.safe_dump(VALID_MANIFEST if manifest is None else manifest, allow_unicode=True),
        "provider/talking_head.yaml": yaml.safe_dump(PROVIDER),
        "provider/talking_head.py": "",
        "tools/list_avatars.yaml": yaml.safe_dump(TOOL),
        "tools/list_avatars.py": "",
        "main.py": "",
        "_assets/icon.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>",
        "requirements.txt": "dify_plugin>=0.10,<0.11\n",
        "PRIVACY.md": "# Privacy\n",
        "README.md": "# Talking Head\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    return root


def edit_manifest(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        manifest = yaml.safe_load((root / "manifest.yaml").read_text(encoding="utf-8"))
        change(manifest)
        (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    return apply


def edit_provider(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / "provider" / "talking_head.yaml"
        provider = yaml.safe_load(path.read_text(encoding="utf-8"))
        change(provider)
        path.write_text(yaml.safe_dump(provider), encoding="utf-8")
    return apply


def delete(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def outside_provider(root: Path) -> None:
    (root.parent / "outside.yaml").write_text(yaml.safe_dump(PROVIDER), encoding="utf-8")
    edit_manifest(lambda m: m["plugins"].update(tools=["../outside.yaml"]))(root)


def second_provider(root: Path) -> None:
    shutil.copy(root / "provider" / "talking_head.yaml", root / "provider" / "other.yaml")
    edit_manifest(lambda m: m["plugins"]["tools"].append("provider/other.yaml"))(root)


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "uppercase author": (edit_manifest(lambda m: m.update(author="Talking-Head")), "author 'Talking-Head' must match"),
    "UUID author": (edit_manifest(lambda m: m.update(author="3f52a0c4-1b2d-4e5f-8a9b-0c1d2e3f4a5b")),
                    "must not be a UUID"),
    "UUID author, no dashes": (edit_manifest(lambda m: m.update(author="3f52a0c41b2d4e5f8a9b0c1d2e3f4a5b")),
                               "must not be a UUID"),
    "version v1": (edit_manifest(lambda m: m.update(version="v1")), "version 'v1' must look like"),
    "version with four parts": (edit_manifest(lambda m: m.update(version="1.2.3.4")), "version '1.2.3.4'"),
    "version as a YAML number": (edit_manifest(lambda m: m.update(version=1.0)), "version 1.0 must look like"),
    "uppercase name": (edit_manifest(lambda m: m.update(name="Talking_Head")), "name 'Talking_Head' must match"),
    "type bundle": (edit_manifest(lambda m: m.update(type="bundle")), "type 'bundle' must be 'plugin'"),
    "repo not a URL": (edit_manifest(lambda m: m.update(repo="talking-head")), "repo 'talking-head' must be a URL"),
    "missing icon": (edit_manifest(lambda m: m.update(icon="nope.svg")), "icon _assets/nope.svg not found"),
    "missing dark icon": (edit_manifest(lambda m: m.update(icon_dark="dark.svg")),
                          "icon_dark _assets/dark.svg not found"),
    "no en_US label": (edit_manifest(lambda m: m.update(label={"zh_Hans": "数字人视频"})), "label.en_US is required"),
    "no description": (edit_manifest(lambda m: m.pop("description")), "description.en_US is required"),
    "description too long": (edit_manifest(lambda m: m.update(description={"en_US": "x" * 1024})),
                             "description.en_US must be text under 1024 characters"),
    "created_at a date": (edit_manifest(lambda m: m.update(created_at="2026-11-23")), "created_at '2026-11-23'"),
    "created_at impossible": (edit_manifest(lambda m: m.update(created_at="2026-13-40T00:00:00Z")),
                              "created_at '2026-13-40T00:00:00Z'"),
    "created_at without zone": (edit_manifest(lambda m: m.update(created_at=datetime(2026, 11, 23))),
                                "created_at needs a time zone"),
    "no created_at": (edit_manifest(lambda m: m.pop("created_at")), "created_at None"),
    "unknown tag": (edit_manifest(lambda m: m.update(tags=["videos", "video"])), "tag 'video' is not one of"),
    "wrong runner version": (edit_manifest(lambda m: m["meta"]["runner"].update(version="3.11")),
                             "meta.runner.version '3.11' must be '3.12'"),
    "runner language go": (edit_manifest(lambda m: m["meta"]["runner"].update(language="go")),
                           "meta.runner.language 'go' must be 'python'"),
    "other entrypoint": (edit_manifest(lambda m: m["meta"]["runner"].update(entrypoint="app")),
                         "meta.runner.entrypoint 'app' must be 'main'"),
    "no main.py": (delete("main.py"), "main.py (meta.runner.entrypoint) not found"),
    "unknown arch": (edit_manifest(lambda m: m["meta"].update(arch=["x86_64"])), "meta.arch ['x86_64']"),
    "bad meta.version": (edit_manifest(lambda m: m["meta"].update(version="1")), "meta.version '1'"),
    "missing privacy file": (delete("PRIVACY.md"), "privacy file PRIVACY.md not found"),
    "no privacy field": (edit_manifest(lambda m: m.pop("privacy")), "privacy must name the privacy policy file"),
    "no memory": (edit_manifest(lambda m: m.pop("resource")), "resource.memory (bytes) is required"),
    "storage too small": (edit_manifest(lambda m: m["resource"]["permission"].update(
        storage={"enabled": True, "size": 10})), "resource.permission.storage.size"),
    "model provider mixed in": (edit_manifest(lambda m: m["plugins"].update(models=["provider/model.yaml"])),
                                "a tool plugin must not also declare plugins.models"),
    "endpoints mixed in": (edit_manifest(lambda m: m["plugins"].update(endpoints=["endpoints/hook.yaml"])),
                           "a tool plugin must not also declare plugins.endpoints"),
    "inline model declaration": (edit_manifest(lambda m: m.update(model={"provider": "x"})),
                                 "a tool plugin must not also declare model"),
    "no tool provider": (edit_manifest(lambda m: m["plugins"].update(tools=[])), "plugins.tools must list"),
    "missing provider yaml": (edit_manifest(lambda m: m["plugins"].update(tools=["provider/nope.yaml"])),
                              "tool provider 'provider/nope.yaml' (plugins.tools) not found"),
    "provider outside the plugin": (outside_provider, "tool provider '../outside.yaml' (plugins.tools) not found"),
    "two providers": (second_provider, "the daemon keeps only the last one"),
    "missing provider icon": (edit_provider(lambda p: p["identity"].update(icon="nope.svg")),
                              "identity.icon 'nope.svg' not found in _assets/"),
    "missing provider dark icon": (edit_provider(lambda p: p["identity"].update(icon_dark="dark.svg")),
                                   "identity.icon_dark 'dark.svg' not found in _assets/"),
    "missing provider source": (delete("provider/talking_head.py"),
                                "extra.python.source provider/talking_head.py not found"),
    "provider without tools": (edit_provider(lambda p: p.update(tools=[])), "tools must list the tool yamls"),
    "missing tool yaml": (delete("tools/list_avatars.yaml"), "tool 'tools/list_avatars.yaml' not found"),
    "missing tool source": (delete("tools/list_avatars.py"), "extra.python.source tools/list_avatars.py not found"),
    "no manifest": (delete("manifest.yaml"), "manifest.yaml not found"),
}


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "plugin")


@pytest.fixture(scope="module")
def real_package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    """The repo root packaged once, as `make package` does (into a temporary folder)."""
    return build_package(REPO, tmp_path_factory.mktemp("dist"))


def test_the_minimal_plugin_is_valid(plugin: Path) -> None:
    assert validate_manifest(plugin) == []


def test_the_repo_manifest_has_no_problems() -> None:
    assert validate_manifest(REPO) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_manifest_rule(plugin: Path, case: str) -> None:
    breaks, expected = BROKEN[case]
    breaks(plugin)
    problems = validate_manifest(plugin)
    assert len(problems) == 1 and expected in problems[0], problems


def test_created_at_as_a_yaml_timestamp_is_accepted(plugin: Path) -> None:
    edit_manifest(lambda m: m.update(created_at=datetime(2026, 11, 23, tzinfo=UTC)))(plugin)
    assert "created_at: 2026-11-23 00:00:00+00:00" in (plugin / "manifest.yaml").read_text()
    assert validate_manifest(plugin) == []


def test_gitignore_is_used_when_there_is_no_difyignore(plugin: Path) -> None:
    (plugin / ".gitignore").write_text("secret.txt\n")
    (plugin / "secret.txt").write_text("key")
    assert "secret.txt" not in collect_files(plugin)
    assert ".gitignore" in collect_files(plugin)
    (plugin / ".difyignore").write_text("# nothing ignored\n")
    assert "secret.txt" in collect_files(plugin)


def test_an_ignored_directory_is_never_entered(plugin: Path) -> None:
    (plugin / ".difyignore").write_text("/notes/\n*.log\n")
    (plugin / "notes" / "deep").mkdir(parents=True)
    (plugin / "notes" / "deep" / "a.md").write_text("x")
    (plugin / "tools" / "run.log").write_text("x")
    files = collect_files(plugin)
    assert not [f for f in files if f.startswith("notes/") or f.endswith(".log")]
    assert ".difyignore" in files


def test_re_includes_are_refused_because_difys_packager_ignores_them(plugin: Path) -> None:
    (plugin / ".difyignore").write_text("/*\n!/manifest.yaml\n")
    with pytest.raises(PackageError, match="ignores re-includes"):
        build_package(plugin, plugin.parent / "dist")


def test_a_referenced_file_that_is_ignored_is_refused(plugin: Path) -> None:
    (plugin / ".difyignore").write_text("_assets/\n")
    with pytest.raises(PackageError, match=r"_assets/icon\.svg is referenced by the plugin but excluded"):
        build_package(plugin, plugin.parent / "dist")


def test_a_packaged_pyproject_is_refused(plugin: Path) -> None:
    (plugin / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(PackageError, match=r"installs from it before requirements\.txt"):
        build_package(plugin, plugin.parent / "dist")


def test_an_invalid_manifest_is_not_packaged(plugin: Path) -> None:
    edit_manifest(lambda m: m.update(author="Talking-Head"))(plugin)
    with pytest.raises(PackageError, match="author 'Talking-Head'"):
        build_package(plugin, plugin.parent / "dist")
    assert not (plugin.parent / "dist").exists()


def test_the_size_limit_counts_uncompressed_bytes(plugin: Path) -> None:
    with pytest.raises(PackageError, match=r"over the 100-byte limit(.|\n)*manifest.yaml: \d+ bytes"):
        build_package(plugin, plugin.parent / "dist", max_bytes=100)


def test_no_limit_goes_past_the_daemons_52428800_bytes(plugin: Path) -> None:
    assert MAX_PACKAGE_BYTES == 52428800
    with (plugin / "_assets" / "big.bin").open("wb") as sparse:
        sparse.truncate(MAX_PACKAGE_BYTES)
    with pytest.raises(PackageError, match=r"over the 52428800-byte limit(.|\n)*_assets/big\.bin"):
        build_package(plugin, plugin.parent / "dist", max_bytes=10 * MAX_PACKAGE_BYTES)


def test_builds_are_reproducible(plugin: Path, tmp_path: Path) -> None:
    first = build_package(plugin, tmp_path / "a")
    second = build_package(plugin, tmp_path / "b")
    assert first.path.read_bytes() == second.path.read_bytes()


def test_the_command_prints_path_size_and_file_count(plugin: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(plugin), "--out-dir", str(tmp_path / "out")]) == 0
    package = tmp_path / "out" / "talking_head-0.1.0.difypkg"
    printed = capsys.readouterr().out
    assert str(package) in printed or os.path.relpath(package) in printed
    assert f"{package.stat().st_size} bytes, 10 files" in printed
    delete("PRIVACY.md")(plugin)
    assert main(["--root", str(plugin), "--out-dir", str(tmp_path / "out")]) == 1
    assert "privacy file PRIVACY.md not found" in capsys.readouterr().err


def test_the_package_holds_the_plugin(real_package: Package) -> None:
    manifest = load_manifest(REPO)
    assert real_package.path.name == f"talking_head-{manifest['version']}.difypkg"
    with zipfile.ZipFile(real_package.path) as archive:
        names = archive.namelist()
    for required in ("manifest.yaml", "main.py", "provider/talking_head.yaml", "_assets/icon.svg",
                     "requirements.txt", "PRIVACY.md", "README.md"):
        assert required in names
    assert any(name.startswith("tools/") and name.endswith(".yaml") for name in names)
    assert names == list(real_package.files)
    with zipfile.ZipFile(real_package.path) as archive:
        readme = archive.read("README.md").decode()
    assert readme.startswith("# Talking Head Video") and "Authorize" in readme  # the marketplace page
    assert {"readme/README_zh_Hans.md", "_assets/icon_dark.svg"} <= set(names)


def test_every_packaged_file_is_the_trees_file_at_the_same_path(real_package: Package) -> None:
    """`dify plugin package` zips each file as it is; a package that matched it only in names would get another
    checksum from the daemon than the one pinned into the example apps."""
    with zipfile.ZipFile(real_package.path) as archive:
        differing = [info.filename for info in archive.infolist()
                     if archive.read(info) != (REPO / info.filename).read_bytes()]
    assert differing == []


def test_the_pinned_identifier_is_the_checksum_of_the_trees_files(real_package: Package) -> None:
    """What `make package` pins equals what the daemon computes for a package the CLI built from this tree:
    SHA-256 over, path by path, the digest of each path and of the tree's bytes."""
    manifest = load_manifest(REPO)
    digests = b"".join(hashlib.sha256(path.encode()).digest() + hashlib.sha256((REPO / path).read_bytes()).digest()
                       for path in sorted(collect_files(REPO)))
    expected = f"{manifest['author']}/{manifest['name']}:{manifest['version']}@{hashlib.sha256(digests).hexdigest()}"
    assert identifier(real_package.path) == expected


def test_the_readmes_show_in_dify(real_package: Package) -> None:
    """Dify reads README.md and readme/README_<language>.md, and shows only images that are _assets/ files."""
    with zipfile.ZipFile(real_package.path) as archive:
        names = set(archive.namelist())
        readmes = {name: archive.read(name).decode() for name in names
                   if name == "README.md" or name.startswith("readme/")}
    assert set(readmes) == {"README.md", "readme/README_zh_Hans.md"}
    for name, text in readmes.items():
        images = MARKDOWN_IMAGE_RE.findall(text)
        assert [image for image in images if not image.startswith("_assets/") or image not in names] == [], name


def test_the_chinese_readme_says_what_the_english_one_says() -> None:
    """A translation that fell behind would tell Chinese-speaking admins about tools, settings or Dify issues
    that differ from the English page: each `code` span and issue number of README.md must be in it too."""
    english, chinese = (REPO / "README.md").read_text(), (REPO / "readme" / "README_zh_Hans.md").read_text()
    spans = set(re.findall(r"`([^`]+)`", english)) | set(re.findall(r"#\d+", english))
    assert sorted(span for span in spans if span not in chinese) == []


def test_a_readme_dify_would_not_show_is_refused(plugin: Path) -> None:
    (plugin / "readme").mkdir()
    (plugin / "readme" / "README_zh_Hans.md").write_text("# 数字人视频\n", encoding="utf-8")
    assert "readme/README_zh_Hans.md" in build_package(plugin, plugin.parent / "ok").files
    (plugin / "readme" / "chinese.md").write_text("# 数字人视频\n", encoding="utf-8")
    with pytest.raises(PackageError, match=r"readme/chinese\.md: Dify reads only readme/README_<language>\.md"):
        build_package(plugin, plugin.parent / "dist")
    (plugin / "readme" / "chinese.md").unlink()
    (plugin / "README.md").unlink()
    with pytest.raises(PackageError, match=r"README\.md is missing: Dify shows it on the plugin's page"):
        build_package(plugin, plugin.parent / "dist")


def test_labels_and_descriptions_in_every_console_language() -> None:
    provider = yaml.safe_load((REPO / "provider" / "talking_head.yaml").read_text(encoding="utf-8"))
    texts = {f"manifest {key}": load_manifest(REPO)[key] for key in ("label", "description")}
    texts |= {f"provider {key}": provider["identity"][key] for key in ("label", "description")}
    texts |= {f"credential {name} {key}": field[key] for name, field in provider["credentials_for_provider"].items()
              for key in ("label", "help") if key in field}
    missing = {where: [locale for locale in LOCALES if not (text.get(locale) or "").strip()]
               for where, text in texts.items()}
    assert {where: locales for where, locales in missing.items() if locales} == {}


@pytest.mark.parametrize("path", ["manifest.yaml", "provider/talking_head.yaml"])
def test_a_dark_icon_of_its_own(path: str) -> None:
    declaration = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
    icons = declaration if path == "manifest.yaml" else declaration["identity"]
    light, dark = (REPO / "_assets" / icons["icon"]), (REPO / "_assets" / icons["icon_dark"])
    assert dark.is_file() and dark.read_bytes() != light.read_bytes()


def test_the_manifest_asks_for_no_permission_the_plugin_does_not_use() -> None:
    """Permissions let a plugin call back into Dify (tools, models, storage, ...); these tools only call the
    bridge, so a permission would be an unused grant an admin has to accept."""
    code = "\n".join(path.read_text(encoding="utf-8") for path in [REPO / "main.py", *REPO.glob("provider/*.py"),
                                                                      *REPO.glob("tools/*.py")])
    assert "session." not in code
    assert "permission" not in load_manifest(REPO)["resource"]


def test_the_package_holds_nothing_but_the_plugin(real_package: Package) -> None:
    with zipfile.ZipFile(real_package.path) as archive:
        names = archive.namelist()
    assert not [name for name in names if name.startswith(NOT_THE_PLUGIN)]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert {name.split("/", 1)[0] for name in names} <= PLUGIN_TOP_LEVEL
    assert real_package.uncompressed <= MAX_PACKAGE_BYTES


def test_the_package_is_a_sorted_deflate_zip(real_package: Package) -> None:
    with zipfile.ZipFile(real_package.path) as archive:
        entries = archive.infolist()
        assert archive.testzip() is None
    names = [entry.filename for entry in entries]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {entry.compress_type for entry in entries} == {zipfile.ZIP_DEFLATED}
    assert sum(entry.file_size for entry in entries) == real_package.uncompressed


@pytest.mark.slow
def test_the_package_installs_in_a_fresh_python_312_venv_and_starts(real_package: Package, tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugin"
    with zipfile.ZipFile(real_package.path) as archive:
        archive.extractall(plugin_dir)
    python312 = subprocess.run([str(REPO / "scripts" / "find-python.sh"), "3.12"], capture_output=True, text=True,
                               check=True).stdout.strip()
    venv = tmp_path / "venv"
    subprocess.run([python312, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-r", "requirements.txt"], cwd=plugin_dir,
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-5000:] + install.stderr[-5000:]

    # As the daemon starts it: `python -m <entrypoint>` in the plugin folder, with little more than PATH.
    with PluginProcess(plugin_dir, python) as plugin:
        events = plugin.startup
    manifest = load_manifest(REPO)
    assert (events[0].get("name"), events[0].get("version")) == (manifest["name"], manifest["version"])
    assert not [event for event in events if event.get("event") == "error"], events
    assert events[-1]["event"] == "heartbeat"
