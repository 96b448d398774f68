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
"""dpp's protocol: generated protobuf and gRPC code (``*_pb2*``: do not edit, run
scripts/gen_proto.sh), and the few hand-written modules both sides share: the frame contract
(:mod:`dpp_proto.wire`, pyarrow only) and the spec defaults
(:mod:`dpp_proto.defaults`, stdlib only)."""
PY
touch "$out/dpp_proto/py.typed"
