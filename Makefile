# Fresh machine: `make demo` sets up .venv (the ExecuTorch extra only) and runs the main job; `make check`
# sets up, installs the Debian packages the tests use and runs every test (what .ci/run calls).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# LiteRT's converter needs typing_extensions<4.13 (see pyproject's litert extra): its own venv.
# the demo needs only the ExecuTorch extra: a fresh machine's `make demo` installs that alone
DEMO_STAMP := $(VENV)/.demo-installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
LITERT_VENV := .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST := $(VENV)/bin/python -m pytest -q -ra -p no:cacheprovider

.PHONY: setup system-deps demo test test-fast check
setup: $(STAMP) $(LITERT_STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[hf,executorch,coreml,litert-runtime,qnn,test]'
	bash scripts/setup_qnn.sh $(VENV)
	rm -f $(VENV)/.installed-*
	touch $@

$(LITERT_STAMP): pyproject.toml
	test -x $(LITERT_VENV)/bin/python || $(PY) -m venv $(LITERT_VENV)
	echo '*' > $(LITERT_VENV)/.gitignore
	$(LITERT_VENV)/bin/pip install -q --upgrade pip
	$(LITERT_VENV)/bin/pip install -q -e '.[litert]'
	rm -f $(LITERT_VENV)/.installed-*
	touch $@

$(DEMO_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[executorch]'
	rm -f $(VENV)/.demo-installed-*
	touch $@

demo: $(DEMO_STAMP)
	$(VENV)/bin/meki demo --out demo_out --overwrite

# Debian packages (apt-get: root, or sudo where available). The only target that installs system packages.
system-deps:
	bash scripts/system_deps.sh

# Every test: the Java reader tests, then the whole pytest suite (slow exports included) on both cores
# (pytest-xdist, one test file per worker at a time: module fixtures are built once; the session's
# export fixtures are shared between the workers). Installs nothing system-wide; a missing Debian
# package is named with 'run make system-deps'.
# The C++ readers run under ASan+UBSan over conformance/, plus a 60 s seeded fuzz (sanitize_test.sh).
test: setup
	bash android_app/scripts/jvm_test.sh
	bash mobile_runtime/native/sanitize_test.sh
	$(PYTEST) -n 2 --dist loadfile --durations=25 tests

# Tests not marked slow (contract, bench engine, apps, training, model unit tests), on both cores.
test-fast: setup
	$(PYTEST) -n 2 --dist loadfile -m "not slow" tests

check: system-deps test
