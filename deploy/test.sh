#!/usr/bin/env bash
# README command 2: install what the tests need (once per machine) and run them.
#   bash deploy/test.sh [pytest args]
# Installs the Python environment (deploy/bootstrap.sh), Debian's PostgreSQL and Chromium,
# and the Kafka broker's jars from Maven Central; starts PostgreSQL; runs pytest.
# The Kafka broker itself is started by the test fixtures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source deploy/bootstrap.sh test
bash deploy/ci/system-deps.sh
source deploy/ci/postgres.sh

set +e
python -m pytest "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": a selection that matched nothing is not a failure here
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
