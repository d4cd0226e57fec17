# edgegw recipes. Run them through ./justw, which installs what they need.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Start the gateway in the foreground on the embedded loopback demo.
run *ARGS:
    edgegw run {{ARGS}}

# Lint and type-check, then run every test (unit and integration).
test: lint
    python -m pytest -q tests/unit tests/integration

# Static checks: ruff and mypy.
lint:
    ruff check gateway tests native
    ruff format --check gateway tests native
    mypy

# Benchmarks (figures, not pass/fail).
bench:
    python -m tests.bench.run_all
