# Fresh machine: `make demo` sets up .venv and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test bench
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[hf,executorch,coreml,test]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(VENV)/bin/meki demo --out demo_out

test: setup
	$(VENV)/bin/python -m pytest -q -ra tests
