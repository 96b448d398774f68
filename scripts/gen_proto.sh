#!/usr/bin/env bash
# Generates dpp_proto/ (Python, .pyi stubs, gRPC stubs) from proto/*.proto.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repository root)
# The generated package is `dpp_proto`, never a top-level `proto` module:
# Google's proto-plus owns that name.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
py="${PYTHON:-$root/.venv/bin/python}"
bin="$(dirname "$py")"
mkdir -p "$out/dpp_proto"
PATH="$bin:$PATH" "$py" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "$root"/proto/dpp_proto/*.proto
cat > "$out/dpp_proto/__init__.py" <<'PY'
"""Generated protobuf and gRPC code for dpp (``*_pb2*``: do not edit, run scripts/gen_proto.sh),
and the few hand-written, standard-library-only modules both sides share (``defaults.py``)."""
PY
touch "$out/dpp_proto/py.typed"
