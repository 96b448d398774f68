"""Which sparse features travel as int32: ``dpp_server.spec.int32_features`` walks each op
chain's declared id range (``OpDef.ids_range``); anything not provably within int32 stays int64."""

from __future__ import annotations

from typing import Any

import pytest

from dpp_client.spec import Feature, Op, SessionSpec
from dpp_server.spec import int32_features, spec_from_proto


def fits(*ops: Op, source: str = "ids") -> bool:
    spec = SessionSpec(
        table_uri="/t",
        features=(Feature("f", "sparse", source=source, ops=ops),),
        batch_size=4,
    )
    return int32_features(spec_from_proto(spec.to_proto())) == {"f"}


def op(name: str, **params: Any) -> Op:
    return Op(name, params)


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ((), False),  # a raw source: unbounded ids
        ((op("sigrid_hash", max_value=100_000),), True),
        ((op("sigrid_hash", max_value=2**31),), True),  # ids up to 2**31 - 1
        ((op("sigrid_hash", max_value=2**31 + 1),), False),
        ((op("sigrid_hash", max_value=1000), op("first_x", x=20), op("dedup")), True),
        ((op("first_x", x=20), op("sigrid_hash", max_value=1000)), True),
        ((op("first_x", x=20),), False),  # keeps an unbounded range
        ((op("clamp_list", min=-5, max=9),), True),
        ((op("clamp_list", min=0),), False),
        ((op("keep_ids", ids=[3, 2**40]),), False),
        ((op("keep_ids", ids=[3, 70]),), True),
        ((op("drop_ids", ids=[3]),), False),
        ((op("ngram", n=2, max_value=500),), True),
    ],
)
def test_op_chains_decide_the_id_type(ops: tuple[Op, ...], expected: bool) -> None:
    assert fits(*ops) is expected


def test_dense_sources_made_sparse() -> None:
    assert fits(op("bucketize", boundaries=[0.0, 1.0]), source="x")
    assert fits(op("onehot", num_classes=7), source="x")
    assert not fits(op("cast", to="id"), source="x")  # int(x) of any float
