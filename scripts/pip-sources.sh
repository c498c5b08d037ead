#!/usr/bin/env bash
# Prints the package sources pip is configured with (pip.conf, PIP_* variables) as uv options, one
# per line: uv reads none of pip's configuration, and a machine with a local wheel mirror or a
# company index configures it for pip. Usage: scripts/pip-sources.sh [PYTHON]
set -euo pipefail
"${1:-python3}" -m pip config list 2>/dev/null | while IFS='=' read -r key value; do
  value=${value#\'} && value=${value%\'}
  case ${key##*.} in
    index-url) echo "--default-index=$value" ;;
    extra-index-url) for url in $value; do echo "--index=$url"; done ;;
    find-links) for link in $value; do echo "--find-links=$link"; done ;;
  esac
done |
  # each source once; of several index URLs the first (the environment's) wins, as it does for pip
  awk '/^--default-index=/ && index_seen++ { next } !seen[$0]++'
