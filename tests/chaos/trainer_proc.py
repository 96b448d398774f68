"""A trainer process for the kill test: reads one epoch, checkpointing after every batch.

The checkpoint file holds the loader's ``state_dict`` and the signatures of every batch
consumed up to it, written atomically together, as a training job checkpoints its model and
its data position together. Started again on the same file, it restores and goes on.

    python tests/chaos/trainer_proc.py MASTER TABLE CHECKPOINT [share]

With ``share`` the session's spec sets ``share`` (shared production across jobs).
"""

from __future__ import annotations

import json
import os
import sys

from chaos_helpers import chaos_spec, signature

from dpp_client import DppLoader


def main() -> None:
    master, table, checkpoint = sys.argv[1:4]
    share = sys.argv[4:5] == ["share"]
    consumed: list[list[object]] = []
    spec = chaos_spec(table, epochs=1, share=share)
    with DppLoader(master, spec, prefetch_batches=4) as loader:
        if os.path.exists(checkpoint):
            with open(checkpoint) as f:
                saved = json.load(f)
            loader.load_state_dict(saved["state"])
            consumed = saved["batches"]
        for batch in loader:
            row_ids, digest = signature(batch)
            consumed.append([list(row_ids), digest])
            tmp = checkpoint + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"state": loader.state_dict(), "batches": consumed}, f)
            os.replace(tmp, checkpoint)
    with open(checkpoint + ".done", "w") as f:
        f.write(str(len(consumed)))


if __name__ == "__main__":
    main()
