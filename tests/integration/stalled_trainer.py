"""A trainer that reads a few batches, then stops reading (as one stuck in a debugger does),
for tests/integration/test_robustness.py, which SIGKILLs it.

    python tests/integration/stalled_trainer.py MASTER TABLE BATCHES SPARSE_FEATURES
"""

from __future__ import annotations

import sys
import time

from dpp_client import DppLoader, Feature, Op, SessionSpec


def main() -> None:
    master, table, batches, sparse = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dense = Feature("d0", "dense", "dense_0", (Op("fill_null", {"value": 0.0}),))
    features = (dense, *(Feature(f"s{i}", "sparse", f"sparse_{i}") for i in range(sparse)))
    spec = SessionSpec(
        table_uri=table, features=features, passthrough=("row_id",), batch_size=500, epochs=1
    )
    with DppLoader(master, spec, prefetch_batches=1) as loader:
        for i, _ in enumerate(loader):
            if i + 1 == batches:
                print("stalled", flush=True)
                time.sleep(3600)


if __name__ == "__main__":
    main()
