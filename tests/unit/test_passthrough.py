"""The passthrough contract end to end, without transport: a table whose files disagree within
type families is accepted at session creation, every split is produced by the worker's
pipeline, decoded by the client, and each row's passthrough values equal the table's (numbers,
booleans and times as tensors with a validity mask, everything else as Arrow arrays). Drift
across families, and a file lacking a column, are refused at session creation naming the
column and both files (docs/tables.md, "Passthrough")."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpp_client.batch import batch_from_arrow, concat_batches
from dpp_client.frames import decode_frame
from dpp_proto import spec_pb2, wire
from dpp_server.errors import SpecError
from dpp_server.master import LeaseGrant, Master, MasterConfig
from dpp_server.produce import SessionPipeline, StageTotals, produce_split
from tests.helpers.server import make_spec

COLUMNS = ["n_int", "n_float", "flag", "name", "ts", "day", "ids", "blob"]
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def values(first: int, rows: int) -> dict[str, list[Any]]:
    """Every passthrough kind, each with nulls, derived from the row id."""
    ids = range(first, first + rows)
    return {
        "row_id": list(ids),
        "dense_0": [float(i) for i in ids],
        "label": [float(i % 2) for i in ids],
        "n_int": [None if i % 5 == 0 else i * 7 for i in ids],
        "n_float": [None if i % 6 == 0 else i / 4 for i in ids],
        "flag": [None if i % 7 == 0 else i % 3 == 0 for i in ids],
        "name": [None if i % 4 == 0 else f"r{i}" for i in ids],
        "ts": [None if i % 9 == 0 else EPOCH + datetime.timedelta(seconds=i) for i in ids],
        "day": [datetime.date(2026, 1, 1) + datetime.timedelta(days=i % 30) for i in ids],
        "ids": [None if i % 8 == 0 else list(range(i % 4)) for i in ids],
        "blob": [bytes([i % 256]) * (i % 3) for i in ids],
    }


# Two files per family member: the second partition's file uses the other member.
TYPES_A = {
    "row_id": pa.int64(),
    "dense_0": pa.float64(),
    "label": pa.float32(),
    "n_int": pa.int32(),
    "n_float": pa.float32(),
    "flag": pa.bool_(),
    "name": pa.string(),
    "ts": pa.timestamp("us", tz="UTC"),
    "day": pa.date32(),
    "ids": pa.list_(pa.int32()),
    "blob": pa.binary(),
}
TYPES_B = {
    **TYPES_A,
    "n_int": pa.int64(),
    "n_float": pa.float64(),
    "name": pa.large_string(),
    "ids": pa.large_list(pa.int64()),
    "blob": pa.large_binary(),
}

TYPES_C = {**TYPES_A, "name": pa.dictionary(pa.int32(), pa.string())}


def write(path: Path, first: int, rows: int, types: dict[str, pa.DataType]) -> None:
    data = values(first, rows)
    table = pa.table({k: pa.array(v, types[k]) for k, v in data.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=250)


@pytest.fixture
def drifting_table(tmp_path: Path) -> Path:
    root = tmp_path / "t"
    write(root / "ds=2026-01-01" / "a.parquet", 0, 1000, TYPES_A)
    write(root / "ds=2026-01-02" / "b.parquet", 1000, 1000, TYPES_B)
    # The dictionary-encoded read of a string column is one more member of the family.
    write(root / "ds=2026-01-03" / "c.parquet", 2000, 500, TYPES_C)
    assert pa.types.is_dictionary(
        pq.read_schema(root / "ds=2026-01-03" / "c.parquet").field("name").type
    )
    return root


def produce_all(master: Master, session_id: str) -> list[Any]:
    """Every split of the session through the worker's pipeline and the client's decoder."""
    spec = master._specs[session_id]
    pipeline = SessionPipeline.compile(spec, read_batch_rows=300)
    split_ids, _ = master.begin_epoch(session_id, 0, 0)
    worker = master.register_worker("127.0.0.1:1", 1)
    batches = []
    while (grant := master.acquire_split(worker)) is not None:
        lease = LeaseGrant(session_id=session_id, epoch=0, rank=0, split=grant.split, start_batch=0)
        for frame in produce_split(pipeline, lease, StageTotals()):
            _, rows = decode_frame(frame)
            if rows is not None:
                batches.append(rows)
    assert len(split_ids) > 3
    return batches


def test_every_passthrough_type_arrives_with_its_values(drifting_table: Path) -> None:
    master = Master(MasterConfig())
    view, _ = master.create_session(
        make_spec(str(drifting_table), passthrough=COLUMNS, batch_size=128, target_split_rows=500)
    )
    rows = produce_all(master, view.session_id)
    # One schema for every batch, whatever file it came from: the assembler can join them.
    assert len({r.schema for r in rows}) == 1
    joined = concat_batches(rows)
    extra = {c: joined.schema.field(wire.EXTRA_PREFIX + c).type for c in COLUMNS}
    assert extra == {
        "n_int": pa.int64(),
        "n_float": pa.float64(),
        "flag": pa.bool_(),
        "name": pa.large_string(),
        "ts": pa.timestamp("us", tz="UTC"),
        "day": pa.date32(),
        "ids": pa.large_list(pa.int64()),
        "blob": pa.large_binary(),
    }
    want = values(0, 2500)
    seen: set[int] = set()
    for rb in rows:
        batch = batch_from_arrow(rb)
        assert set(batch.extras) == {"row_id", "n_int", "n_float", "flag", "ts", "day"}
        assert set(batch.extras_arrow) == {"name", "ids", "blob"}
        assert set(batch.extras_valid) == set(batch.extras)
        for i, row_id in enumerate(batch.extras["row_id"].tolist()):
            seen.add(row_id)
            got = {name: t[i].item() for name, t in batch.extras.items()}
            valid = {name: bool(t[i]) for name, t in batch.extras_valid.items()}
            assert_row(row_id, got, valid, batch.extras_arrow, i, want)
    assert seen == set(range(2500))
    assert sum(r.num_rows for r in rows) == 2500


def assert_row(
    row_id: int,
    got: dict[str, Any],
    valid: dict[str, bool],
    arrow: dict[str, pa.Array],
    i: int,
    want: dict[str, list[Any]],
) -> None:
    n_int, n_float, flag, ts = (want[c][row_id] for c in ("n_int", "n_float", "flag", "ts"))
    assert (valid["n_int"], got["n_int"]) == (n_int is not None, n_int or 0)
    assert valid["n_float"] == (n_float is not None)
    if n_float is None:
        assert math.isnan(got["n_float"])
    else:
        assert got["n_float"] == n_float
    assert (valid["flag"], got["flag"]) == (flag is not None, bool(flag))
    micros = (
        0
        if ts is None
        else int((ts - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)).total_seconds()) * 10**6
    )
    assert (valid["ts"], got["ts"]) == (ts is not None, micros)
    assert got["day"] == (want["day"][row_id] - datetime.date(1970, 1, 1)).days
    assert valid["day"]
    assert arrow["name"][i].as_py() == want["name"][row_id]
    assert arrow["ids"][i].as_py() == want["ids"][row_id]
    assert arrow["blob"][i].as_py() == want["blob"][row_id]


@pytest.mark.parametrize(
    ("column", "other"),
    [
        ("ts", pa.timestamp("ms", tz="UTC")),  # unit drift: not one family
        ("n_int", pa.string()),
        ("name", pa.int64()),
    ],
)
def test_drift_across_families_is_refused_naming_both_files(
    tmp_path: Path, column: str, other: pa.DataType
) -> None:
    root = tmp_path / "t"
    write(root / "ds=2026-01-01" / "a.parquet", 0, 100, TYPES_A)
    data = values(100, 100)
    if pa.types.is_string(other):
        data[column] = [None if v is None else str(v) for v in data[column]]
    elif pa.types.is_integer(other):
        data[column] = [None if v is None else len(v) for v in data[column]]
    table = pa.table(
        {k: pa.array(v, other if k == column else TYPES_A[k]) for k, v in data.items()}
    )
    (root / "ds=2026-01-02").mkdir()
    pq.write_table(table, root / "ds=2026-01-02" / "b.parquet")
    master = Master(MasterConfig())
    with pytest.raises(SpecError) as caught:
        master.create_session(make_spec(str(root), passthrough=[column]))
    message = str(caught.value)
    assert caught.value.field == "passthrough[1]"  # make_spec passes row_id first
    assert f"passthrough column {column!r}" in message
    assert str(root / "ds=2026-01-01" / "a.parquet") in message
    assert str(root / "ds=2026-01-02" / "b.parquet") in message
    assert str(TYPES_A[column]) in message and str(other) in message


def test_a_file_lacking_a_read_column_is_refused_at_creation(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write(root / "ds=2026-01-01" / "a.parquet", 0, 100, TYPES_A)
    data = values(100, 100)
    del data["name"]
    (root / "ds=2026-01-02").mkdir()
    pq.write_table(
        pa.table({k: pa.array(v, TYPES_A[k]) for k, v in data.items()}),
        root / "ds=2026-01-02" / "b.parquet",
    )
    master = Master(MasterConfig())
    with pytest.raises(SpecError, match=r"column 'name' is missing from .*b\.parquet") as caught:
        master.create_session(make_spec(str(root), passthrough=["name"]))
    assert caught.value.field == "passthrough[1]"
    # Not reading it, or pruning the partition, is fine.
    master.create_session(make_spec(str(root)))
    master.create_session(
        make_spec(str(root), passthrough=["name"], partition_filter="ds = '2026-01-01'")
    )


def test_a_feature_source_that_drifts_out_of_its_kind_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write(root / "ds=2026-01-01" / "a.parquet", 0, 100, TYPES_A)
    data = values(100, 100)
    data["dense_0"] = [str(v) for v in data["dense_0"]]
    types = {**TYPES_A, "dense_0": pa.string()}
    (root / "ds=2026-01-02").mkdir()
    pq.write_table(
        pa.table({k: pa.array(v, types[k]) for k, v in data.items()}),
        root / "ds=2026-01-02" / "b.parquet",
    )
    with pytest.raises(SpecError, match=r"in '.*b\.parquet'; column 'dense_0' is double") as caught:
        Master(MasterConfig()).create_session(make_spec(str(root)))
    assert caught.value.field == "features[0].source"


def test_spec_proto_passthrough_field_is_unchanged() -> None:
    # The contract lives in the wire types, not in the spec: nothing new to send.
    assert "passthrough" in spec_pb2.SessionSpec.DESCRIPTOR.fields_by_name
