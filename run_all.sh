#!/usr/bin/env bash
# One-script reproduction of Diversity Training (Kariyappa & Qureshi 2019): Table 2, Fig. 4, Fig. 5.
# Usage: bash run_all.sh [--only=STAGE] [--dry-run] PRESET   (bash run_all.sh --help lists presets)
#
# The presets, their stages and the rules that decide what re-runs live in one Python table,
# tf_divtrain/pipeline/presets.py; this script is the documented shell entry to that pipeline.
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python}" -m tf_divtrain.pipeline "$@"
