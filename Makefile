# Fresh machine: `make demo` sets up .venv and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# LiteRT's converter needs typing_extensions<4.13 (see pyproject's litert extra): its own venv.
LITERT_VENV := .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup system-deps demo test
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

demo: setup
	$(VENV)/bin/meki demo --out demo_out

system-deps:
	bash scripts/system_deps.sh

# JVM (Java pack/manifest readers vs the golden vectors) first: it also installs the APK-check tools.
test: setup system-deps
	bash android_app/scripts/jvm_test.sh
	$(VENV)/bin/python -m pytest -q -ra tests
