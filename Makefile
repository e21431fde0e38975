# One command each: `make demo`, `make test`. Both install first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BYTECODE := $(VENV)/.bytecode
SOURCES := $(shell find onnxattack cli model_zoo -name '*.py')
EXTRAS ?= cpu,dev,zoo,report,variants,openvino
DEMO_DIR := demo_output

.PHONY: install browser test demo bench table lint typecheck fuzz gpu-check clean

install: $(STAMP) $(BYTECODE) browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The project's bytecode, compiled ahead: where PYTHONDONTWRITEBYTECODE is set (as in this container) Python
# never caches it, and every `onnxattack` process compiled the ~100 modules again (0.2-0.3 s of each start).
# Recompiled when a source changes; a stale .pyc is never used (Python checks the source's mtime).
$(BYTECODE): $(STAMP) $(SOURCES)
	$(BIN)/python -m compileall -q onnxattack cli model_zoo >/dev/null
	touch $(BYTECODE)

# Debian's Chromium, for the HTML report's browser test (tests/test_report_html.py, driven through the
# playwright package of the dev extra; no browser is downloaded). Where it cannot be installed (not root,
# no apt-get) that test is skipped with the reason: this step never fails the install.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "no chromium: the browser test will be skipped"

test: $(STAMP) $(BYTECODE) browser
	$(BIN)/python -m pytest -q

demo: $(STAMP) $(BYTECODE)
	$(BIN)/onnxattack zoo build digits-mosaic
	$(BIN)/onnxattack zoo inputs digits-mosaic --count 32 -o $(DEMO_DIR)/inputs.npy --overwrite
	$(BIN)/onnxattack attack "$$($(BIN)/onnxattack zoo path digits-mosaic)" $(DEMO_DIR)/inputs.npy \
		-o $(DEMO_DIR)/demo.h5 --overwrite --method ml-cw --target hide-single --seed 0
	$(BIN)/onnxattack report $(DEMO_DIR)/demo.h5 --png $(DEMO_DIR)/demo.png

bench: $(STAMP) $(BYTECODE)
	$(BIN)/python -m bench.run

table: $(STAMP)
	$(BIN)/python -m bench.table --out docs/results.md

lint: $(STAMP)
	$(BIN)/ruff check onnxattack cli model_zoo tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

fuzz: $(STAMP)
	$(BIN)/python -m bench.fuzz --mutants 10000 --seed 1

# On a lent GPU machine whose python3 has torch, onnx, onnxruntime (CPU) and h5py, with the onnx2torch
# and click wheels brought along and model_zoo/built carried (built here with
# `ONNXATTACK_ZOO_DIR=model_zoo/built onnxattack zoo build`): no venv, validation on onnxruntime's CPU.
gpu-check:
	ONNXATTACK_ZOO_DIR=model_zoo/built python3 bench/gpu_check.py --device cuda --out gpu_check.json

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
