# Entry points; see README.md. Every target runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Results log of benchmark-cpu; raw timings go to timings/ beside it.
RESULTS ?= reports/results.csv

.PHONY: setup test train-cpu benchmark-cpu table lab clean-venv

setup: $(VENV)/.installed

# Reinstall when the requirements or the package metadata change.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# Train the two CPU models of params/cpu.yaml on the real data, then time both at batch 1.
train-cpu: setup
	$(BIN)/cifar10-latency train plain_cnn --params cpu
	$(BIN)/cifar10-latency train mobilenet_v3_small --params cpu

# Both models, 2 and 1 threads, NCHW and channels_last, one after the other in a single run.
benchmark-cpu: setup
	for model in plain_cnn mobilenet_v3_small; do \
	  for threads in 2 1; do \
	    $(BIN)/cifar10-latency benchmark weights/$$model.safetensors --device cpu --threads $$threads \
	      --step cli_cpu --variant fp32_$${threads}thread --results $(RESULTS) || exit 1; \
	    $(BIN)/cifar10-latency benchmark weights/$$model.safetensors --device cpu --threads $$threads \
	      --channels-last --step cli_cpu --variant fp32_cl_$${threads}thread --results $(RESULTS) || exit 1; \
	  done; \
	done

table: setup
	$(BIN)/cifar10-latency table

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
