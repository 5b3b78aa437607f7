# The two commands: `make demo` (the whole mission on configs/tiny.yaml) and `make test`.
# Both create .venv when missing. torch is installed first, and only when the venv has none, so a
# GPU user's own CUDA build is kept; override the pin with `make TORCH=torch==X.Y.Z ...`.
# Bytecode is compiled once at the end on every core (pip compiles file by file on one, which is
# half the install); the few files some packages ship for newer Pythons fail there, as under pip.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint clean

demo: $(STAMP)
	$(VENV)/bin/gpt1 run configs/tiny.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --no-compile "$(TORCH)"
	$(PIP) install --no-compile -e ".[dev]"
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
