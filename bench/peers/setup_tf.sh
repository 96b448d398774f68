#!/usr/bin/env bash
# Creates .venv-tf: TensorFlow (CPU) and tensorflow-io for the tf.data service peer row of the
# benchmark suite (bench/peers/tfdata.py). Its own venv, because TensorFlow pins a protobuf that
# dpp's grpcio/protobuf stack does not accept; nothing here enters pyproject.toml.
#
#   bench/peers/setup_tf.sh            # about 1.2 GB, a few minutes
#   VENV_TF=/elsewhere bench/peers/setup_tf.sh
#
# tensorflow-io 0.37.1 is built against TensorFlow 2.17 (its last release; none supports 2.18+),
# and is what reads Parquet inside the TF graph (IODataset.from_parquet, a C++ op), so TF is
# pinned to 2.17 rather than the newest 2.21. pyarrow 16 (TF 2.17 needs numpy < 2) only reads
# the table for its one-time TFRecord copy (tensorflow-io cannot read its id-list columns).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3.11}
VENV_TF=${VENV_TF:-.venv-tf}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "tensorflow-io 0.37 wheels need Python 3.11"'
test -x "$VENV_TF/bin/python" || "$PYTHON" -m venv "$VENV_TF"
"$VENV_TF/bin/python" -m pip install -q --upgrade pip
"$VENV_TF/bin/python" -m pip install -q 'tensorflow-cpu==2.17.*' 'tensorflow-io==0.37.1' 'pyarrow==16.1.*'
"$VENV_TF/bin/python" -c 'import tensorflow as tf, tensorflow_io as tfio; print("tf", tf.__version__, "tfio", tfio.__version__)'
