"""Client-side session specs shared by the integration tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from dpp_client import Feature, Op, SessionSpec


def resume_spec(table: str, **overrides: Any) -> SessionSpec:
    """Deterministic and shuffled, small splits and batches over a ``dpp gen`` table: many
    leases in flight and a real order, so a resume or a warm start that repeated, lost or
    reordered a batch shows. ``overrides`` replace fields (e.g. ``epochs=2``)."""
    spec = SessionSpec(
        table_uri=table,
        features=(
            Feature("d0", "dense", source="dense_0", ops=(Op("fill_null", {"value": 0.0}),)),
            Feature("s0", "sparse", source="sparse_0", ops=(Op("first_x", {"x": 4}),)),
        ),
        label="label",
        passthrough=("row_id",),
        batch_size=700,
        target_split_rows=2000,
        seed=13,
        shuffle=True,
        deterministic=True,
        max_splits_in_flight=4,
    )
    return dataclasses.replace(spec, **overrides)
