#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows/*.yml) with
# actionlint, and the shell in their `run:` steps with shellcheck.
#
#   bash .ci/actionlint.sh          (from anywhere in the repository)
#
# actionlint is built from the Go module proxy at the pinned version, once,
# into a cache directory outside the clone keyed by that version
# (${XDG_CACHE_HOME:-$HOME/.cache}/matrix-turnify-actionlint/VERSION), so
# that CI's fresh clone reuses it. shellcheck comes from Debian; without it
# actionlint skips the shell checks, so its absence is an error here.
# Bash stays: it is two tool runs (go install, actionlint) and a loop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly ACTIONLINT_VERSION=v1.7.12
readonly BIN_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/matrix-turnify-actionlint/$ACTIONLINT_VERSION"
readonly ACTIONLINT="$BIN_DIR/actionlint"

if ! [[ -x "$ACTIONLINT" ]] || [[ "$("$ACTIONLINT" -version | head -n 1)" != "$ACTIONLINT_VERSION" ]]; then
    echo "building actionlint $ACTIONLINT_VERSION into $BIN_DIR"
    mkdir -p "$BIN_DIR"
    # In a temporary directory: no go.mod of ours is involved.
    (cd "$(mktemp -d)" && GOBIN="$BIN_DIR" GOFLAGS='' go install \
        "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION")
fi

command -v shellcheck >/dev/null || python3 tests/e2e/lib/install.py apt shellcheck >/dev/null
command -v shellcheck >/dev/null || { echo "shellcheck is missing: actionlint would skip run: steps"; exit 1; }

workflows=(.github/workflows/*.yml)
echo "actionlint $("$ACTIONLINT" -version | head -n 1), $(shellcheck --version | sed -n 's/^version: /shellcheck /p')"
# One check per workflow, through the project's reporter.
REPORT_TALLY="$(mktemp)"
export REPORT_TALLY
trap 'rm -f "$REPORT_TALLY"' EXIT
report() { python3 tests/e2e/lib/report.py "$@"; }
for workflow in "${workflows[@]}"; do
    if out="$("$ACTIONLINT" -shellcheck "$(command -v shellcheck)" "$workflow" 2>&1)"; then
        report pass "actionlint and shellcheck: $workflow"
    else
        report fail "actionlint and shellcheck: $workflow" "$out"
    fi
done
report summary
