# c10k: `make run` sets everything up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
MATRIX ?= seed
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test container-test lint bench clean venv test-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: the study over the seed matrix (the original's test cases and
# more), report in a new dated folder under results/ (a study never replaces
# another's results). `make run MATRIX=quick` for a two-minute look.
run: $(STAMP)
	$(BIN)/c10k doctor
	$(BIN)/c10k study --matrix $(MATRIX) --list
	$(BIN)/c10k study --matrix $(MATRIX)

test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q

# The tests drive a real non-echo server (redis-server, Debian's package) as well as our own.
test-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package) for the load tests"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }

# The Docker image built and run as in the original study, under podman
# (needs root, podman, runc, debootstrap: .ci/run installs them; see container/README.md).
# Makes the stand-in base image when missing; KEEP_IMAGE=1 keeps epoll_server_image.
container-test: $(STAMP)
	C10K_KEEP_IMAGE=$(KEEP_IMAGE) $(BIN)/python -m pytest -q -m container tests/container

lint: $(STAMP)
	$(BIN)/ruff check src tests bench container
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
