# The project's test suite, SSH tests included, run the way CI runs it (SPEC Z3):
#   docker build -t mlrunner-test . && docker run --rm mlrunner-test
# The tests start their own sshd on 127.0.0.1; the image only needs the server installed.
FROM python:3.11-slim

# Debian's package versions are not pinned: the slim image's archive replaces them, and an old
# pin would stop the build. hadolint ignore=DL3008 says so to the linter.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-server bash git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN python3 -m pip install --no-cache-dir -e '.[test]'

CMD ["bash", ".ci/run"]
