#!/usr/bin/env bash
# deploy/systemd/matrix-turnify.service, checked without a running systemd:
#
#   bash .ci/systemd-checks.sh          (Debian 12; from anywhere)
#
# - `systemd-analyze verify` in a scratch root that holds Debian's own unit
#   files, the unit and the release binary at its ExecStart path: no error
#   and no warning (an unknown or misspelt key is only a warning, and
#   verify then still exits 0, so its output must be empty);
# - the hardening the unit promises is in it: DynamicUser, ProtectSystem=
#   strict, NoNewPrivileges, and no capability at all (an empty bounding set
#   and no ambient ones);
# - `systemd-analyze security --offline=true`: the exposure score systemd
#   itself gives the unit stays at most EXPOSURE_MAX.
#
# systemd-analyze comes from Debian's systemd package (installed if missing;
# where it cannot be, the checks say SKIPPED with the reason). Reports through
# tests/e2e/lib/report.py; exits non-zero on failure. Bash stays: the checks
# are systemd-analyze command lines and greps of their output.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

readonly UNIT=deploy/systemd/matrix-turnify.service
readonly NAME=matrix-turnify.service
# On the printed scale (0 to 10); --threshold takes it times ten.
readonly EXPOSURE_MAX=2.0

WORK="$(mktemp -d /tmp/systemd-checks.XXXXXX)"
readonly WORK
export REPORT_TALLY="$WORK/tally"
report() { python3 tests/e2e/lib/report.py "$@"; }
pass() { report pass "$1"; }
# fail NAME [DETAIL_FILE]
fail() { report fail "$1" "$([[ $# -ge 2 && -s "$2" ]] && cat "$2")"; }
finish() {
    local rc=0
    report summary || rc=$?
    rm -rf "$WORK"
    return "$rc"
}
trap 'finish; exit $?' EXIT

if ! command -v systemd-analyze >/dev/null; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "SKIPPED  systemd-analyze is not installed, and installing Debian's systemd needs root"
        exit 0
    fi
    python3 tests/e2e/lib/install.py apt systemd >"$WORK/apt.log" 2>&1 \
        || { fail "apt-get install systemd" "$WORK/apt.log"; exit 1; }
fi
pass "$(systemd-analyze --version | head -n 1)"

# The release binary, where the unit's ExecStart looks for it.
exec_start="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$UNIT")"
if ! cargo build --locked --release -p matrix-turnify --bin matrix-turnify >"$WORK/build.log" 2>&1; then
    fail "cargo build --locked --release (the binary the unit starts)" "$WORK/build.log"
    exit 1
fi
root="$WORK/root"
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root$(dirname "$exec_start")"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
install -m 0755 target/release/matrix-turnify "$root$exec_start"
install -m 0644 "$UNIT" "$root/etc/systemd/system/$NAME"

if systemd-analyze --root="$root" verify "$NAME" >"$WORK/verify.log" 2>&1 && [[ ! -s "$WORK/verify.log" ]]; then
    pass "systemd-analyze verify $UNIT: no error, no warning (ExecStart=$exec_start is the release binary)"
else
    fail "systemd-analyze verify $UNIT: no error, no warning" "$WORK/verify.log"
fi

missing=()
for line in DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes CapabilityBoundingSet= AmbientCapabilities=; do
    grep -qx "$line" "$UNIT" || missing+=("$line")
done
if grep -Eq '^(CapabilityBoundingSet|AmbientCapabilities)=.+' "$UNIT"; then
    missing+=("no capability named in CapabilityBoundingSet= or AmbientCapabilities=")
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    pass "hardened: DynamicUser=yes, ProtectSystem=strict, NoNewPrivileges=yes, no capabilities"
else
    printf '%s\n' "${missing[@]}" >"$WORK/missing.log"
    fail "hardened: the unit lacks" "$WORK/missing.log"
fi

if systemd-analyze --root="$root" security --offline=true --threshold="${EXPOSURE_MAX/./}" "$NAME" \
    >"$WORK/security.log" 2>&1; then
    pass "systemd-analyze security --offline=true: $(grep -o 'Overall exposure level.*' "$WORK/security.log") (at most $EXPOSURE_MAX)"
else
    grep -E '^✗|Overall' "$WORK/security.log" >"$WORK/security.short" || cp "$WORK/security.log" "$WORK/security.short"
    fail "systemd-analyze security --offline=true: exposure at most $EXPOSURE_MAX" "$WORK/security.short"
fi
