# Talking Head for Dify: one entry point for setting up, demoing, testing and benchmarking.
# Two environments, as in production: .venv (server: bridge + engine, Python 3.11) and
# .venv-plugin (the Dify plugin, Python 3.12); a third, .venv-comfyui, runs ComfyUI with the node pack (comfyui/).

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip configuration names index folders that may not exist; its warnings are noise.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
VENV := .venv
PLUGIN_VENV := .venv-plugin
PY := $(VENV)/bin/python
export ENGINE_STORAGE_ROOT ?= $(CURDIR)/var
DEMO_TEXT ?= Hello! I am a talking head, made from one line of text on a plain CPU. Nice to meet you.
DEMO_OUT ?= out/demo.mp4

.PHONY: setup system-deps samples demo test bench quality lint package clean comfyui comfyui-setup

setup: system-deps $(VENV)/.installed $(PLUGIN_VENV)/.installed samples

# Debian packages: ffprobe (media validation), a font with CJK glyphs for burned-in subtitles,
# redis-server (the bridge's queue and replay store; tests start their own) and a single-node Ceph
# radosgw (the S3 server the object-store tests start on loopback), and the checkers the deployment
# tests use: promtool (prometheus) and systemd-analyze (systemd). The cluster test adds PostgreSQL (the job table
# of a multi-host install) and iproute2 (its hosts are network namespaces). The bridge README's curl walk-through
# runs as a test, with curl and jq. The ComfyUI test loads the UI examples in headless Chromium.
SYSTEM_PACKAGES := ffmpeg fonts-wqy-microhei redis-server radosgw ceph-mon ceph-osd prometheus systemd postgresql \
	iproute2 curl jq chromium
system-deps:
	@if ! command -v ffprobe >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1 || \
	    ! command -v radosgw >/dev/null 2>&1 || ! command -v ceph-osd >/dev/null 2>&1 || \
	    ! command -v promtool >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1 || \
	    ! command -v ip >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	    ! command -v curl >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 || \
	    [ ! -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; then \
	  echo "installing $(SYSTEM_PACKAGES) (Debian packages)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "missing: run 'sudo apt-get install $(SYSTEM_PACKAGES)' and retry" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

# The dev and test environment takes every extra, neural included, so the Wav2Lip and face_alignment tests run;
# a server needs none of them for the default path (docs/server.md).
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { py=$$(scripts/find-python.sh 3.11) && $$py -m venv $(VENV); }
	@echo "installing the server environment ($(VENV), Python 3.11)"
	@$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)
	@$(PY) -m pip install -q -e '.[piper,postgres,neural,dev]' $(QUIET_PIP)
	@touch $@

$(PLUGIN_VENV)/.installed: requirements.txt
	@test -x $(PLUGIN_VENV)/bin/python || { py=$$(scripts/find-python.sh 3.12) && $$py -m venv $(PLUGIN_VENV); }
	@echo "installing the plugin environment ($(PLUGIN_VENV), Python 3.12)"
	@$(PLUGIN_VENV)/bin/python -m pip install -q --upgrade pip $(QUIET_PIP)
	@$(PLUGIN_VENV)/bin/python -m pip install -q -r requirements.txt $(QUIET_PIP)
	@touch $@

samples: $(VENV)/.installed
	@$(PY) -m engine avatars samples >/dev/null

# Goes through the bridge: `python -m bridge up`, a fresh API key, a text job, the signed link.
demo: setup
	@$(PY) scripts/demo.py --text "$(DEMO_TEXT)" --out $(DEMO_OUT)

test: setup comfyui-setup
	$(PY) -m pytest -q

bench: setup
	$(PY) tests/bench/engine_bench.py
	$(PY) tests/bench/bridge_bench.py 2>/dev/null
	$(PY) tests/bench/edge_bench.py 2>/dev/null
	$(PY) tests/bench/intake_bench.py 2>/dev/null
	$(PY) tests/bench/up_bench.py
	$(PLUGIN_VENV)/bin/python tests/bench/plugin_handover_bench.py

# Renders the fixed hard cases (tests/quality/) and writes the mouth's contact sheets, report.md and report.json
# to out/quality/; exits non-zero if a case misses `python -m engine eval`'s targets. QUALITY_CASES picks a subset.
# Only the server environment is needed: the cases build their avatars in their own store (out/quality/store).
quality: system-deps $(VENV)/.installed
	$(PY) -m tests.quality --out out/quality

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The .difypkg in dist/, plus copies of the example app DSLs pinned to exactly that package.
package: $(VENV)/.installed
	@$(PY) scripts/package_plugin.py
	@$(PY) scripts/pin_dsl.py dist/$$(sed -n 's/^name: *//p' manifest.yaml)-$$(sed -n 's/^version: *//p' manifest.yaml).difypkg --out-dir dist/examples

# ComfyUI with the node pack (comfyui/), CPU only, on 127.0.0.1:8188. ComfyUI is $(COMFYUI_DIR) when set, else
# the unmodified 0.3.64 source snapshot unpacked into .comfyui/ (ignored). It runs in .venv-comfyui: torch 2.14.1
# and torchvision 0.29.1 (a pair this machine's pip has on disk; PyPI's torchvision does not load beside the
# cached CPU torch 2.13), ComfyUI's requirements.txt plus requests (which it omits), and this repo without extras.
COMFY_VENV := .venv-comfyui
COMFYUI_SNAPSHOT ?= ../shared/vendor/comfyui-0.3.64-src.tar.gz
COMFYUI_HOME := $(if $(COMFYUI_DIR),$(COMFYUI_DIR),.comfyui/ComfyUI)
COMFYUI_PORT ?= 8188

.comfyui/ComfyUI/main.py:
	@test -f $(COMFYUI_SNAPSHOT) || { echo "no ComfyUI: set COMFYUI_DIR or put the snapshot at $(COMFYUI_SNAPSHOT)" >&2; exit 1; }
	@mkdir -p .comfyui && tar xzf $(COMFYUI_SNAPSHOT) -C .comfyui && touch $@

$(COMFY_VENV)/.installed: pyproject.toml $(COMFYUI_HOME)/main.py
	@test -x $(COMFY_VENV)/bin/python || { py=$$(scripts/find-python.sh 3.11) && $$py -m venv $(COMFY_VENV); }
	@echo "installing the ComfyUI environment ($(COMFY_VENV), Python 3.11; torch is several GB)"
	@$(COMFY_VENV)/bin/python -m pip install -q --upgrade pip $(QUIET_PIP)
	@$(COMFY_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 $(QUIET_PIP)
	@$(COMFY_VENV)/bin/python -m pip install -q -r $(COMFYUI_HOME)/requirements.txt requests $(QUIET_PIP)
	@$(COMFY_VENV)/bin/python -m pip install -q -e . $(QUIET_PIP)
	@touch $@

# Skipped, with a note, when there is no ComfyUI to install against (the tests then skip too).
comfyui-setup:
	@if [ -n "$(COMFYUI_DIR)" ] || [ -f $(COMFYUI_SNAPSHOT) ]; then $(MAKE) --no-print-directory $(COMFY_VENV)/.installed; \
	else echo "no ComfyUI (COMFYUI_DIR unset, no $(COMFYUI_SNAPSHOT)): skipping .venv-comfyui"; fi

comfyui: system-deps $(COMFY_VENV)/.installed
	@mkdir -p $(COMFYUI_HOME)/custom_nodes && ln -sfn $(CURDIR)/comfyui $(COMFYUI_HOME)/custom_nodes/talking_head
	@$(COMFY_VENV)/bin/python -m engine avatars samples >/dev/null
	cd $(COMFYUI_HOME) && $(CURDIR)/$(COMFY_VENV)/bin/python main.py --cpu --listen 127.0.0.1 --port $(COMFYUI_PORT)

clean:
	rm -rf $(VENV) $(PLUGIN_VENV) $(COMFY_VENV) .comfyui var out dist .pytest_cache .ruff_cache
