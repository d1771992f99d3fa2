# The project's test suite, run the way CI runs it (SPEC Z3):
#   docker build -t mlrunner-test . && docker run --rm mlrunner-test
# The tests start their own sshd on 127.0.0.1 and their own slurmctld/slurmd, load pages in headless
# Chromium, watch syscalls with strace and terminals under tmux: the image only needs them installed
# (the same Debian packages scripts/test.sh installs where they are missing).
FROM python:3.11-slim

# Debian's package versions are not pinned: the slim image's archive replaces them, and an old
# pin would stop the build. hadolint ignore=DL3008 says so to the linter.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-server bash git chromium strace slurm-wlm tmux procps tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN python3 -m pip install --no-cache-dir -e '.[test]'

# An init as pid 1 reaps orphaned processes, as on a real machine; pytest as pid 1 would not.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bash", ".ci/run"]
