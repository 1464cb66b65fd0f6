# rlgen: `make test` and `make demo` set up their own virtual environment on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint bench demo digits diffusion-grpo venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check rlgen tests benchmarks

test: lint
	$(PY) -m pytest -q -n auto --dist loadgroup

# The main job: pretrain the built-in LM on addition, fine-tune it with GRPO (about a minute).
demo: $(STAMP)
	$(VENV)/bin/rlgen addition --out-dir runs/demo --overwrite $(ARGS)

# One generative family trained on the 8x8 digits: make digits FAMILY=diffusion (vae, gan, flow, energy).
FAMILY ?= diffusion
digits: $(STAMP)
	$(VENV)/bin/rlgen digits $(FAMILY) --out-dir runs/digits-$(FAMILY) --overwrite $(ARGS)

# RL for the digit diffusion model: make diffusion-grpo ARGS="--method nft" (grpo, grpo-fast, nft, draft, refl, dpo).
diffusion-grpo: $(STAMP)
	$(VENV)/bin/rlgen diffusion-grpo --out-dir runs/diffusion-grpo --overwrite $(ARGS)

# bench_trl.py runs TRL's side in its own venv (torch + TRL, benchmarks/trl_requirements.txt,
# torch first: its CPU wheel); when that install fails, it says so and runs rlgen's side only.
TRL_VENV  ?= .venv-trl
TRL_STAMP := $(TRL_VENV)/.installed
TRL_REQS  := benchmarks/trl_requirements.txt

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_ppo.py
	@mkdir -p runs
	@if [ $(TRL_STAMP) -nt $(TRL_REQS) ] || { echo "installing TRL's venv ($(TRL_VENV)) ..." >&2; \
	    { $(PYTHON) -m venv $(TRL_VENV) \
	      && $(TRL_VENV)/bin/pip install --quiet $$(grep '^torch==' $(TRL_REQS)) \
	      && $(TRL_VENV)/bin/pip install --quiet -r $(TRL_REQS) \
	      && touch $(TRL_STAMP); } > runs/trl_install.log 2>&1; }; then \
	  $(PY) benchmarks/bench_trl.py --trl-python $(TRL_VENV)/bin/python --out runs/bench_trl.json; \
	else \
	  $(PY) benchmarks/bench_trl.py --out runs/bench_trl.json \
	    --skip-trl "installing $(TRL_VENV) failed (log: runs/trl_install.log)"; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
