#!/usr/bin/env bash
# Prepare the real datasets (UAVid + VDD, RuralScapes, Cityscapes sequences) from the archives you downloaded
# into datasets/. A thin wrapper over `python -m data.prepare`; see `bash process_dataset.sh --help`.
#   bash process_dataset.sh                      every dataset whose archives are in datasets/
#   bash process_dataset.sh --only uavid --resize 2560x1440 --jobs 8
#   python -m data.prepare verify datasets/UAVid
set -euo pipefail
# Paths you pass (--archive, --datasets-dir) stay relative to where you started, although we cd to the repo.
export TCSEG_CALLER_DIR="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
exec "$PY" -m data.prepare "$@"
