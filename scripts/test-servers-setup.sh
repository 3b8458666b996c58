#!/usr/bin/env bash
# Install the real FHIR servers the tests run beside sekmet-fhir (tests/real_servers.py):
# - Medplum's FHIR router: `npm ci` from tests/servers/medplum/package-lock.json
#   (needs Node.js 20.19 or newer with npm);
# - fhirsnake: its own virtual environment, .venv-fhirsnake, from the pinned
#   tests/servers/fhirsnake/requirements.txt (needs Python 3.11 or newer; its FastAPI
#   pin conflicts with sekmet-fhir's).
# Without them those tests are skipped (failed under CI). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    echo "test-servers-setup: Node.js 20.19+ with npm is needed for the Medplum server" >&2
    exit 2
fi
(cd tests/servers/medplum && npm ci --no-audit --no-fund --loglevel=error)

python3 -m venv .venv-fhirsnake
.venv-fhirsnake/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/servers/fhirsnake/requirements.txt
