# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint setup clean-demo bench reward-long

# torch==2.13.0 is pinned in requirements.lock: on this kind of machine pip takes the CPU build from local disk.
# --no-compile: Python compiles only the modules it imports, on first import (setup 40 s instead of 64 s).
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	$(PY) -m pip install -q --no-compile --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prefopt run configs/testbed.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# The reward issue's longer run: the demo's SFT model, then a reward model on 100,000 testbed comparisons
# (the size of OpenAI's TL;DR comparison set), 1 epoch, judged on 5,000 held-out pairs (standard error of an
# accuracy ~0.6 points, against ~1.3 on the usual 1,000), ~20 min on 2 cores. Needs `make demo` first.
reward-long: $(STAMP)
	test -f runs/testbed/sft/DONE.json || $(MAKE) demo
	mkdir -p runs/testbed-rm100k && cp -rn runs/testbed/base runs/testbed/sft runs/testbed-rm100k/
	$(VENV)/bin/prefopt reward configs/testbed.yaml name=testbed-rm100k data.limit_train=100000 data.limit_eval=5000 reward.epochs=1
	$(PY) -m prefopt.reward.fact_probe runs/testbed-rm100k

clean-demo:
	rm -rf runs/testbed
