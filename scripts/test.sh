#!/usr/bin/env bash
# Install what the test suite needs, then run all of it. CI (.ci/run) and the Docker image call this.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec python3 -m pytest -q "$@"
