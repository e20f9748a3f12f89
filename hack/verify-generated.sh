#!/usr/bin/env bash
# Fails when the generated paths given as arguments differ from what is
# committed: a changed type or chart value without
# `make generate manifests docs` must not land.
# Run after regenerating; untracked files under those paths count as drift.
set -euo pipefail
cd "$(dirname "$0")/.."
drift=$(git status --porcelain --untracked-files=all -- "$@")
if [ -n "$drift" ]; then
  echo "Generated files differ from the tree; run 'make generate manifests docs' and commit:" >&2
  echo "$drift" >&2
  git --no-pager diff --stat -- "$@" >&2
  exit 1
fi
echo "generated files are in sync: $*"
