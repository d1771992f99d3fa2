#!/usr/bin/env bash
# Install what the test suite needs, then run all of it. CI (.ci/run) and the Docker image call this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The suite runs real components where users have them; these Debian packages bring them. One that
# is missing is installed when we can (root and apt-get); otherwise the tests that need it skip, and
# fail under CI=true, saying what is missing.
missing=()
need() {  # need <command or path> <package>
  [ -x "$1" ] || command -v "$1" > /dev/null 2>&1 || missing+=("$2")
}
need /usr/sbin/sshd openssh-server   # SSH tests (SPEC 4, 8): real sshd servers on 127.0.0.1 (tests/sshd.py)
need chromium chromium               # --report tests (V3): the page in a real headless Chromium
need strace strace                   # the durability test (I5) watches fsync and rename
need /usr/sbin/slurmctld slurm-wlm   # Slurm tests (S6): a real slurmctld and slurmd (tests/slurmd.py)
need /usr/sbin/slurmd slurm-wlm
need git git                         # code push (H13) asks git which files a work tree holds
need tmux tmux                       # the live status line seen in a real terminal (R3)
if [ ${#missing[@]} -gt 0 ]; then
  packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "scripts/test.sh: installing Debian packages the tests need: $packages" >&2
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages > /dev/null
  else
    echo "scripts/test.sh: note: missing Debian packages ($packages) cannot be installed here (needs root" \
         "and apt-get): the tests that need them skip (and fail under CI=true)." >&2
  fi
fi

# The package (editable) and the test extra; skipped when both are already here (the Docker
# image installs them at build time, so it runs without network).
if ! python3 -c "import mlrunner, pytest, paramiko, pandas, yaml, sys; sys.exit(not mlrunner.__file__.startswith('$PWD/'))" \
     2> /dev/null || ! command -v hadolint > /dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
fi
exec python3 -m pytest -q --durations=15 "$@"  # the slowest tests named: the suite must stay well under 10 minutes
