"""Iceberg tables (storage/iceberg.py) on a real sqlite catalog and real Parquet files that
pyiceberg wrote: planning from the manifests, snapshot pins, renames by field id, pruning,
and the refusals. Values are compared with pyiceberg's own read of the same snapshot."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg import expressions as ice
from pyiceberg.catalog import Catalog
from pyiceberg.types import DoubleType

from dpp_proto import spec_pb2
from dpp_server.errors import SpecError
from dpp_server.master import Master, MasterConfig
from storage import (
    FilterError,
    StorageError,
    Table,
    TableNotFoundError,
    parse_filter,
    read_split,
)
from storage.errors import TableLayoutError, TableUriError
from storage.filesystem import resolve
from storage.iceberg import IcebergTable, iceberg_filter, parse_uri
from storage.rewrite import cluster_table
from storage.table import Plan, RenamedColumn
from tests.helpers.iceberg import (
    CATALOG,
    DAYS,
    append,
    commit_position_delete,
    configure_catalog,
    create_events,
    renamed,
    rows,
)

URI = f"iceberg://{CATALOG}/db.events"


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    return configure_catalog(tmp_path, monkeypatch)


def read_plan(uri: str, plan: Plan, columns: list[str], row_filter: str = "") -> pa.Table:
    """Every planned split read as a worker reads it, sorted by the first column."""
    filesystem, _ = resolve(uri)
    parsed = parse_filter(row_filter, "row_filter") if row_filter else None
    batches = [
        batch
        for split in plan.splits
        for batch in read_split(
            split, filesystem=filesystem, columns=columns, row_filter=parsed, batch_rows=300
        )
    ]
    read = pa.Table.from_batches(batches) if batches else pa.table({c: [] for c in columns})
    return read.sort_by(columns[0])


def test_every_row_once_with_pyiceberg_values(catalog: Catalog) -> None:
    table = create_events(catalog)
    append(table, rows(0, 3000))
    append(table, rows(3000, 1500))
    opened = Table.open(URI)
    assert isinstance(opened, IcebergTable)
    assert opened.partition_columns == []
    plan = opened.plan_splits(target_split_rows=600)
    # 2 commits x 3 days = 6 files of 500 or 1000 rows in row groups of 250: splits of
    # whole row groups, at most 600 rows each.
    assert plan.num_files == 6 and plan.num_rows == 4500
    assert all(s.num_rows <= 600 for s in plan.splits) and len(plan.splits) == 9
    assert plan.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    columns = ["row_id", "ds", "price", "clicks", "tag"]
    got = read_plan(URI, plan, columns)
    want = table.scan().to_arrow().select(columns).sort_by("row_id")
    assert got.column("row_id").to_pylist() == list(range(4500))
    for column in columns:
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column


def test_filter_on_the_partition_column_plans_only_its_files(catalog: Catalog) -> None:
    table = create_events(catalog)
    append(table, rows(0, 3000))
    append(table, rows(3000, 3000))
    opened = Table.open(URI)
    everything = opened.plan_splits(target_split_rows=10_000)
    assert everything.num_files == 6 and len(everything.splits) == 6
    row_filter = f"ds = '{DAYS[1]}' AND clicks >= 3"
    plan = opened.plan_splits(10_000, row_filter=parse_filter(row_filter, "row_filter"))
    # Manifest pruning by partition value: the two files of that day only.
    assert len(plan.splits) == 2 and plan.num_files == 2
    assert all(f"ds={DAYS[1]}" in s.path for s in plan.splits)
    got = read_plan(URI, plan, ["row_id", "clicks"], row_filter)
    want = table.scan(row_filter=f"ds == '{DAYS[1]}' and clicks >= 3").to_arrow().sort_by("row_id")
    assert got.column("row_id").to_pylist() == want.column("row_id").to_pylist()
    assert got.num_rows > 0


def test_column_statistics_prune_files_without_opening_them(catalog: Catalog) -> None:
    table = create_events(catalog)
    append(table, rows(0, 3000))
    append(table, rows(3000, 3000))
    row_filter = "row_id >= 4500"
    plan = Table.open(URI).plan_splits(10_000, row_filter=parse_filter(row_filter, "row_filter"))
    assert plan.num_files == 3  # the second commit's files: the first's row_id max is 2999
    got = read_plan(URI, plan, ["row_id"], row_filter)
    assert got.column("row_id").to_pylist() == list(range(4500, 6000))


def test_a_renamed_column_is_found_by_field_id(catalog: Catalog) -> None:
    table = create_events(catalog)
    append(table, rows(0, 900))
    with table.update_schema() as update:
        update.rename_column("price", "unit_price")
        update.rename_column("tag", "label_tag")
    new_names = {"price": "unit_price", "tag": "label_tag"}
    append(table, renamed(rows(900, 900), new_names))  # written under the new names
    opened = Table.open(URI)
    assert "unit_price" in opened.schema.names and "price" not in opened.schema.names
    row_filter = "unit_price > 10"
    plan = opened.plan_splits(10_000, row_filter=parse_filter(row_filter, "row_filter"))
    old = [s for s in plan.splits if s.renamed]
    assert len(old) == 3 and len(plan.splits) == 6
    assert old[0].renamed == (
        RenamedColumn(column="label_tag", file_column="tag"),
        RenamedColumn(column="unit_price", file_column="price"),
    )
    got = read_plan(URI, plan, ["row_id", "unit_price", "label_tag"], row_filter)
    want = table.scan(row_filter="unit_price > 10").to_arrow().sort_by("row_id")
    assert got.num_rows == want.num_rows > 0
    for column in ("row_id", "unit_price", "label_tag"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    assert plan.drift == ()


def test_a_pinned_snapshot_reads_its_rows_under_its_schema(catalog: Catalog) -> None:
    table = create_events(catalog)
    first = append(table, rows(0, 600))
    with table.update_schema() as update:
        update.rename_column("price", "unit_price")
    second = append(table, renamed(rows(600, 600), {"price": "unit_price"}))
    pinned = Table.open(f"{URI}@{first}")
    assert isinstance(pinned, IcebergTable) and pinned.snapshot_id == first
    assert "price" in pinned.schema.names  # the schema the snapshot was committed with
    plan = pinned.plan_splits(10_000)
    assert plan.snapshot_id == first and plan.num_rows == 600
    got = read_plan(f"{URI}@{first}", plan, ["row_id", "price"])
    want = table.scan(snapshot_id=first).to_arrow().sort_by("row_id")
    assert got.column("price").to_pylist() == want.column("price").to_pylist()
    current = Table.open(URI).plan_splits(10_000)
    assert current.snapshot_id == second and current.num_rows == 1200


def test_a_filter_on_a_renamed_column_prunes_by_the_current_name(catalog: Catalog) -> None:
    table = create_events(catalog)
    first = append(table, rows(0, 3000))
    with table.update_schema() as update:
        update.rename_column("row_id", "rid")
    append(table, renamed(rows(3000, 3000), {"row_id": "rid"}))
    # Pinned to the first snapshot, the filter names the old column; pyiceberg binds with
    # the current schema: the translation matches them by field id.
    pinned = Table.open(f"{URI}@{first}")
    assert isinstance(pinned, IcebergTable)
    expression = iceberg_filter(
        parse_filter("row_id < 100", "row_filter"),
        table.metadata.schema_by_id(0),  # type: ignore[arg-type]
        table.schema(),
    )
    assert expression == ice.LessThan("rid", 100)
    # Unpinned, the filter names the new column; the first commit's files call it row_id,
    # and their row groups are still pruned by statistics under that name: row groups of
    # 250 rows in id order, two of four kept in each of those three files.
    latest = Table.open(URI).plan_splits(
        10_000, row_filter=parse_filter("rid >= 2000", "row_filter")
    )
    assert latest.num_files == 6 and latest.num_rows == 1500 + 3000
    got = read_plan(URI, latest, ["rid"], "rid >= 2000")
    assert got.column("rid").to_pylist() == list(range(2000, 6000))
    plan = pinned.plan_splits(10_000, row_filter=parse_filter("row_id >= 2000", "row_filter"))
    # The pinned snapshot's three files only, and in each the row groups (of 250 rows, in
    # row_id order) whose statistics allow row_id >= 2000: two of four.
    assert plan.num_files == 3 and plan.num_rows == 1500
    got = read_plan(f"{URI}@{first}", plan, ["row_id"], "row_id >= 2000")
    assert got.column("row_id").to_pylist() == list(range(2000, 3000))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clicks > 3", ice.GreaterThan("clicks", 3)),
        ("3 < clicks", ice.GreaterThan("clicks", 3)),
        ("clicks > 3 AND price * 2 > 1", ice.GreaterThan("clicks", 3)),  # arithmetic: dropped
        ("clicks > 3 OR price * 2 > 1", ice.AlwaysTrue()),  # an OR needs both sides
        ("clicks < 1.5", ice.AlwaysTrue()),  # pyiceberg would round 1.5 for an int column
        ("price < 1.5", ice.LessThan("price", 1.5)),
        ("ds = 5", ice.AlwaysTrue()),  # a number against a string column
        ("tag IN ('t1', 't2')", ice.In("tag", ("t1", "t2"))),  # type: ignore[call-arg, arg-type]
        ("NOT (clicks = 2)", ice.Not(ice.EqualTo("clicks", 2))),
        (
            "clicks BETWEEN 2 AND 4",
            ice.And(ice.GreaterThanOrEqual("clicks", 2), ice.LessThanOrEqual("clicks", 4)),
        ),
        ("tag IS NULL", ice.IsNull("tag")),  # type: ignore[call-arg, arg-type]
    ],
)
def test_the_row_filter_translates_soundly(
    catalog: Catalog, text: str, expected: ice.BooleanExpression
) -> None:
    table = create_events(catalog)
    schema = table.schema()
    got = iceberg_filter(parse_filter(text, "row_filter"), schema, schema)
    assert got == expected


def test_refusals_name_what_was_wrong(catalog: Catalog, tmp_path: Path) -> None:
    table = create_events(catalog)
    with pytest.raises(TableNotFoundError, match="has no snapshot yet"):
        Table.open(URI)
    first = append(table, rows(0, 300))
    with pytest.raises(TableNotFoundError) as info:
        Table.open("iceberg://nosuch/db.events")
    assert "catalog 'nosuch' is not configured" in str(info.value)
    assert "PYICEBERG_CATALOG__NOSUCH__URI" in str(info.value)
    with pytest.raises(TableNotFoundError) as info:
        Table.open(f"iceberg://{CATALOG}/db.evnts")
    assert "has no table 'db.evnts'" in str(info.value) and "db.events" in str(info.value)
    with pytest.raises(TableNotFoundError) as info:
        Table.open(f"{URI}@12345")
    assert "has no snapshot 12345" in str(info.value) and str(first) in str(info.value)
    with pytest.raises(TableUriError, match="names no namespace"):
        parse_uri(f"iceberg://{CATALOG}/events")
    with pytest.raises(TableUriError, match="is not a snapshot id"):
        parse_uri(f"{URI}@latest")
    with pytest.raises(StorageError, match="dpp cluster rewrites Hive-partitioned tables"):
        cluster_table(URI, str(tmp_path / "sorted"), by="row_id")
    with pytest.raises(FilterError, match="hidden partitions"):
        Table.open(URI).plan_splits(
            1000, partition_filter=parse_filter("ds = '2026-01-01'", "partition_filter")
        )


def test_delete_files_are_refused_naming_them(catalog: Catalog, tmp_path: Path) -> None:
    table = catalog.create_table(
        "db.plain", schema=rows(0, 1).schema, properties={"format-version": "2"}
    )
    before = append(table, rows(0, 100))
    deletes = commit_position_delete(table, tmp_path, row=3)
    assert table.scan().to_arrow().num_rows == 99  # pyiceberg applies it
    uri = f"iceberg://{CATALOG}/db.plain"
    with pytest.raises(TableLayoutError) as info:
        Table.open(uri).plan_splits(1000)
    message = str(info.value)
    assert deletes in message and "delete file" in message and "compact the table" in message
    # The snapshot before the delete still plans (what the message suggests).
    assert Table.open(f"{uri}@{before}").plan_splits(1000).num_rows == 100


def test_a_column_added_later_is_refused_naming_the_file_that_lacks_it(catalog: Catalog) -> None:
    table = create_events(catalog)
    first = append(table, rows(0, 300))
    with table.update_schema() as update:
        update.add_column("weight", DoubleType())
    data = rows(300, 300)
    second = append(table, data.append_column("weight", pa.array([1.0] * 300)))
    old_files = {t.file.file_path for t in table.scan(snapshot_id=first).plan_files()}
    master = Master(MasterConfig())

    def session(passthrough: list[str]) -> spec_pb2.SessionSpec:
        spec = spec_pb2.SessionSpec(
            table_uri=URI, batch_size=100, target_split_rows=1000, passthrough=passthrough
        )
        spec.features.add(name="p", source="price", kind=spec_pb2.FEATURE_KIND_DENSE)
        return spec

    with pytest.raises(SpecError) as info:
        master.create_session(session(["row_id", "weight"]))
    message = str(info.value)
    assert "column 'weight' is missing from" in message
    assert any(path.removeprefix("file://") in message for path in old_files)
    view, _ = master.create_session(session(["row_id"]))
    assert view.plan.snapshot_id == second and view.plan.num_rows == 600
