#!/usr/bin/env bash
# Install what the test suite needs, then run all of it. CI (.ci/run) and the Docker image call this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The SSH tests (SPEC section 4) start real OpenSSH servers on 127.0.0.1 (tests/sshd.py): they need
# /usr/sbin/sshd. Install Debian's openssh-server when it is missing and we can; otherwise those tests
# skip (or fail, under CI=true) with a message saying what is missing.
if [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "scripts/test.sh: /usr/sbin/sshd is missing; installing openssh-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server > /dev/null
  else
    echo "scripts/test.sh: note: /usr/sbin/sshd is missing and cannot be installed here (needs root and" \
         "apt-get); install openssh-server, or the SSH tests will be skipped (failed under CI=true)." >&2
  fi
fi

# The --report tests (SPEC V3) load the page in a real headless Chromium: Debian's chromium.
if ! command -v chromium > /dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "scripts/test.sh: chromium is missing; installing it" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null
  else
    echo "scripts/test.sh: note: chromium is missing and cannot be installed here (needs root and apt-get);" \
         "install Debian's chromium, or the report tests will be skipped (failed under CI=true)." >&2
  fi
fi

# The durability test (SPEC I5) watches the runner's fsync and rename calls under strace.
if ! command -v strace > /dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "scripts/test.sh: strace is missing; installing it" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace > /dev/null
  else
    echo "scripts/test.sh: note: strace is missing and cannot be installed here (needs root and apt-get);" \
         "install strace, or the fsync test will be skipped (failed under CI=true)." >&2
  fi
fi

# The Slurm tests (SPEC S6) start a real slurmctld and slurmd on this machine (tests/slurmd.py):
# Debian's slurm-wlm. Without it they skip, and fail under CI=true.
if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "scripts/test.sh: slurmctld/slurmd are missing; installing slurm-wlm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm > /dev/null
  else
    echo "scripts/test.sh: note: slurmctld is missing and cannot be installed here (needs root and apt-get);" \
         "install Debian's slurm-wlm, or the Slurm tests will be skipped (failed under CI=true)." >&2
  fi
fi

# The code-push tests (SPEC H13) make a git work tree and let mlrunner ask `git ls-files`: they need git.
if ! command -v git > /dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "scripts/test.sh: git is missing; installing it" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git > /dev/null
  else
    echo "scripts/test.sh: note: git is missing and cannot be installed here; the code-push tests will fail." >&2
  fi
fi

# The package (editable) and the test extra; skipped when both are already here (the Docker
# image installs them at build time, so it runs without network).
if ! python3 -c "import mlrunner, pytest, paramiko, pandas, yaml, sys; sys.exit(not mlrunner.__file__.startswith('$PWD/'))" \
     2> /dev/null || ! command -v hadolint > /dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
fi
exec python3 -m pytest -q "$@"
