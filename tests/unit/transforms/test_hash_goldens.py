"""Pinned values of every hash dpp defines: a change here changes every hashed id of every model
trained on dpp output, and which rows sampling keeps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dpp_server.transforms.hashing import hash_ids_values, string_hash_values
from dpp_server.transforms.sampling import uniform
from tests.helpers.op_reference import ngram, run_feature
from tests.helpers.oracle import hash_ids, string_hash, unit

STRINGS = ["", "a", "05db9164", "é", "日本語", "abcdefghi"]
STRING_GOLDEN = [0, 355, 84, 419, 74, 453]  # hash_string(s; salt 0) mod 1000


def test_string_hash_golden() -> None:
    assert [string_hash(s, 0) % 1000 for s in STRINGS] == STRING_GOLDEN
    flat = string_hash_values(pa.array(STRINGS), 0) % np.uint64(1000)
    assert flat.tolist() == STRING_GOLDEN
    got = run_feature(
        {"c": pa.array(STRINGS)}, "sparse", "c", [{"op": "hash_string", "max_value": 1000}]
    )
    assert got == [[v] for v in STRING_GOLDEN]
    salted = run_feature(
        {"c": pa.array(["", "05db9164"])},
        "sparse",
        "c",
        [{"op": "hash_string", "max_value": 2**53, "salt": 7}],
    )
    assert salted == [[1903260921327221], [2524821635178646]]


def test_ngram_and_cross_golden() -> None:
    """A 1-tuple hash is sigrid_hash; pairs hash the same in ngram and cross."""
    assert ngram([1, 2, 3, 4], 2, 0, 1000) == [769, 160, 883]
    assert hash_ids([2, 3], 0) % 1000 == 160
    ids = {"a": pa.array([[1, 2, 3, 4]]), "b": pa.array([[3]])}
    assert run_feature(ids, "sparse", "a", [{"op": "ngram", "n": 2, "max_value": 1000}]) == [
        [769, 160, 883]
    ]
    ops = [{"op": "cross", "other": "b", "max_value": 1000}]
    assert run_feature(ids, "sparse", "a", ops) == [[42, 160, 525, 451]]
    three = run_feature(
        ids, "sparse", "a", [{"op": "ngram", "n": 3, "salt": 5, "max_value": 2**53}]
    )
    assert three == [[4850011395684694, hash_ids([2, 3, 4], 5) % 2**53]]
    assert hash_ids_values([np.array([1], np.int64)], 0).tolist() == [hash_ids([1], 0)]


def test_sampling_draw_golden() -> None:
    keys = np.array([0, 1, 2, 3], dtype=np.uint64)
    assert uniform(keys, 0).tolist() == [
        0.0,
        0.7044485202539007,
        0.22947943964848072,
        0.04421244678994485,
    ]
    assert uniform(keys, 0)[1] == unit(hash_ids([1], 0))
