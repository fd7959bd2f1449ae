#!/usr/bin/env bash
# `make mutation`: mutmut over the pure modules named in pyproject.toml ([tool.mutmut]) against
# their fast tests, then the score per module and the surviving mutants. Not part of `make test`
# (about 20-30 minutes on 2 cores). Survivors judged harmless are listed in the README.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
rm -rf mutants
"$VENV/bin/mutmut" run --max-children "${JOBS:-2}" >/dev/null 2>mutants.log || true
"$VENV/bin/mutmut" results --all true > mutants/results.txt 2>/dev/null || "$VENV/bin/mutmut" results > mutants/results.txt
"$VENV/bin/python" scripts/mutation_score.py mutants/results.txt
