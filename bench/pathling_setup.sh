#!/usr/bin/env bash
# Make bench/.venv-pathling: Pathling 6.3.1 + pyspark 3.4 for bench/pathling_compare.py.
#
#   bash bench/pathling_setup.sh            # uses python3; PYTHON=python3.11 to choose
#
# Everything comes from PyPI by exact pin (bench/pathling-requirements.txt); nothing is
# fetched at run time: Pathling's library jar ships inside its wheel
# (pathling/jars/library-runtime-6.3.1.jar) and Spark's jars inside pyspark's. Needs
# Java 17 on PATH. Never run by the tests or CI. Writes the installed versions to
# bench/.venv-pathling/versions.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-pathling"
python="${PYTHON:-python3}"

java -version 2>&1 | head -1 | grep -q '"17\.' || {
    echo "pathling_setup: Java 17 is needed on PATH (Pathling 6.3.1 runs on Spark 3.4)" >&2
    exit 2
}
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$here/pathling-requirements.txt"
jar="$("$venv/bin/python" -c 'from pathling.etc import find_jar; print(find_jar())')"
test -f "$jar" || { echo "pathling_setup: Pathling's jar is missing from the wheel" >&2; exit 1; }
{
    "$venv/bin/python" --version
    java -version 2>&1 | head -1
    "$venv/bin/python" -m pip freeze --all
    echo "jar: $jar ($(stat -c %s "$jar") bytes)"
} > "$venv/versions.txt"
cat "$venv/versions.txt"
