#!/usr/bin/env bash
# Fails when dpp_proto/ is not what scripts/gen_proto.sh makes from proto/*.proto.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$root/scripts/gen_proto.sh" "$tmp" >/dev/null
# Compare the generated files only: dpp_proto/ also holds hand-written modules (defaults.py).
stale=0
for f in "$tmp"/dpp_proto/* "$root"/dpp_proto/*_pb2*; do
  name="$(basename "$f")"
  if ! diff "$tmp/dpp_proto/$name" "$root/dpp_proto/$name"; then
    stale=1
  fi
done
if [ "$stale" != 0 ]; then
  echo "dpp_proto/ is stale: run 'make proto' and commit the result" >&2
  exit 1
fi
# The generated package must never be importable as Google's top-level `proto`.
if [ -e "$root/proto/__init__.py" ]; then
  echo "proto/ must hold .proto sources only, not a Python package" >&2
  exit 1
fi
echo "dpp_proto/ matches proto/"
