"""Root conftest: nothing here imports torch, so the contract, bench-engine, app and training tests
run in an environment without it. Torch fixtures (exported bundles) live in tests/model/conftest.py."""
