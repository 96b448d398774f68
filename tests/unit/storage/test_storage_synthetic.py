"""The synthetic table generator: determinism, layout and the shape of its distributions."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.errors import StorageError
from storage.synthetic import GenConfig, generate_table
from storage.table import Table

SMALL = GenConfig(
    rows=12_000,
    days=2,
    dense=5,
    sparse=4,
    max_list_len=6,
    row_group_rows=1_000,
    rows_per_file=2_500,
    id_space=1_000,
    seed=7,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    root = tmp_path_factory.mktemp("synthetic") / "t"
    summary = generate_table(str(root), SMALL)
    assert (summary.rows, summary.files) == (12_000, 6)
    assert summary.bytes == sum(p.stat().st_size for p in root.rglob("*.parquet"))
    table = Table.open(str(root))
    batches = [
        b
        for s in table.plan_splits(10_000).splits
        for b in pq.ParquetFile(s.path).iter_batches(row_groups=list(s.row_groups))
    ]
    files = sorted(root.rglob("*.parquet"))
    ds_column = pa.chunked_array(
        [
            pa.array([p.parent.name.removeprefix("ds=")] * pq.ParquetFile(p).metadata.num_rows)
            for p in files
        ]
    )
    return root, pa.Table.from_batches(batches).append_column("ds", ds_column)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    config = GenConfig(rows=3_000, days=2, dense=2, sparse=2, rows_per_file=1_000, seed=3)
    generate_table(str(tmp_path / "a"), config)
    generate_table(str(tmp_path / "b"), config)
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert a == b and len(a) == 4
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    generate_table(str(tmp_path / "c"), GenConfig(**{**config.__dict__, "seed": 4}))
    assert (tmp_path / "c" / a[0]).read_bytes() != (tmp_path / "a" / a[0]).read_bytes()


def test_layout_schema_and_partitions(generated: tuple[Path, pa.Table]) -> None:
    root, _ = generated
    assert sorted(p.name for p in root.iterdir()) == ["ds=2026-01-01", "ds=2026-01-02"]
    assert sorted(p.name for p in (root / "ds=2026-01-01").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = Table.open(str(root))
    assert table.partition_columns == ["ds"]
    assert table.schema.names == [
        "row_id", "user_id", "session_id",
        "dense_0", "dense_1", "dense_2", "dense_3", "dense_4",
        "sparse_0", "sparse_1", "sparse_2", "sparse_3",
        "label", "ds",
    ]  # fmt: skip
    assert table.schema.field("sparse_0").type == pa.list_(pa.int64())
    assert table.schema.field("dense_0").type == pa.float32()
    assert table.schema.field("label").type == pa.int8()
    first = pq.ParquetFile(root / "ds=2026-01-01" / "part-00000.parquet")
    assert "ds" not in first.schema_arrow.names
    assert [first.metadata.row_group(i).num_rows for i in range(3)] == [1_000, 1_000, 500]


def test_row_id_unique_complete_and_in_path_order(generated: tuple[Path, pa.Table]) -> None:
    _, rows = generated
    assert rows.column("row_id").to_numpy().tolist() == list(range(12_000))
    days = rows.column("ds").to_numpy(zero_copy_only=False)
    assert (days[:6_000] == "2026-01-01").all() and (days[6_000:] == "2026-01-02").all()


def test_dense_nulls_skew_and_negatives(generated: tuple[Path, pa.Table]) -> None:
    _, rows = generated
    for i in range(SMALL.dense):
        column = rows.column(f"dense_{i}")
        assert abs(column.null_count / rows.num_rows - SMALL.null_share) < 0.02
    dense_0 = rows.column("dense_0").drop_null().to_numpy()
    assert dense_0.min() > 0 and np.mean(dense_0) > np.median(dense_0) * 1.3  # right-skewed
    dense_3 = rows.column("dense_3").drop_null().to_numpy()
    assert 0 < (dense_3 < 0).mean() < 0.1


def test_sparse_lists_lengths_and_ids(generated: tuple[Path, pa.Table]) -> None:
    _, rows = generated
    for i in range(SMALL.sparse):
        column = rows.column(f"sparse_{i}")
        lengths = pc.list_value_length(column).to_numpy()
        assert (lengths == 0).any(), "empty lists present"
        assert lengths.max() <= SMALL.max_list_len
        assert 1.2 < lengths.mean() < 2.8  # about max_list_len / 3
        ids = pc.list_flatten(column).to_numpy()
        assert ids.min() >= 0 and ids.max() < SMALL.id_space
        counts = np.bincount(ids, minlength=SMALL.id_space)
        assert np.sort(counts)[-10:].sum() > 0.2 * len(ids), "Zipf: a few ids dominate"


def test_sessions_are_adjacent_and_share_user_side_features(
    generated: tuple[Path, pa.Table],
) -> None:
    _, rows = generated
    session = rows.column("session_id").to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], session[1:] != session[:-1]]))
    # Adjacent: every session id forms exactly one run.
    assert len(np.unique(session)) == len(starts)
    assert 3.0 < rows.num_rows / len(starts) < 5.0  # rows_per_session = 4
    run_of_row = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(session))))
    first_row = pa.array(starts[run_of_row])
    user_side = SMALL.num_user_sparse
    assert user_side == 2
    for name in ["user_id", *(f"sparse_{i}" for i in range(user_side))]:
        column = rows.column(name)
        assert column.equals(column.take(first_row)), f"{name} identical within a session"
    item = rows.column(f"sparse_{user_side}")
    assert not item.equals(item.take(first_row)), "item-side features vary within sessions"


def test_click_rate_and_its_dependence_on_dense_0(generated: tuple[Path, pa.Table]) -> None:
    _, rows = generated
    label = rows.column("label").to_numpy()
    assert set(np.unique(label)) == {0, 1}
    assert abs(label.mean() - SMALL.click_rate) < 0.008
    dense_0 = rows.column("dense_0").fill_null(0.0).to_numpy()
    high = dense_0 > np.median(dense_0)
    assert label[high].mean() > 1.3 * label[~high].mean()


def test_no_sessions_when_rows_per_session_is_one(tmp_path: Path) -> None:
    generate_table(
        str(tmp_path / "t"), GenConfig(rows=500, days=1, dense=1, sparse=1, rows_per_session=1.0)
    )
    session = pq.read_table(tmp_path / "t").column("session_id").to_numpy()
    assert len(np.unique(session)) == 500


def test_memory_uri_and_refusal_to_overwrite() -> None:
    uri = f"memory://dpp-gen-{uuid.uuid4().hex}/t"
    config = GenConfig(rows=2_000, days=2, dense=1, sparse=1, rows_per_file=600)
    summary = generate_table(uri, config)
    assert summary.files == 4
    plan = Table.open(uri).plan_splits(10_000)
    assert plan.num_rows == 2_000 and plan.num_partitions == 2
    with pytest.raises(StorageError, match="already holds files; remove the folder"):
        generate_table(uri, config)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="zipf_a must be > 1"):
        GenConfig(zipf_a=1.0)
    with pytest.raises(ValueError, match="rows_per_session must be >= 1"):
        GenConfig(rows_per_session=0.5)
    with pytest.raises(ValueError, match="max_user_list_len must be >= 0"):
        GenConfig(max_user_list_len=-1)


def test_user_side_lists_follow_their_own_cap(tmp_path: Path) -> None:
    config = GenConfig(
        rows=3_000, days=1, dense=1, sparse=4, max_list_len=6, max_user_list_len=60, seed=1
    )
    generate_table(str(tmp_path / "t"), config)
    rows = pq.read_table(tmp_path / "t")
    assert config.num_user_sparse == 2
    for i in range(4):
        lengths = pc.list_value_length(rows.column(f"sparse_{i}")).to_numpy()
        cap = 60 if i < 2 else 6
        assert config.list_len_cap(i) == cap
        assert lengths.max() <= cap
        assert cap / 5 < lengths.mean() < cap / 2  # about a third of the cap
