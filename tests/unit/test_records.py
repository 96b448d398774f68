"""The records that cross a boundary: each dataclass and its proto message declare the same
fields, and every record survives its proto and JSON forms."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from google.protobuf.message import Message

from dpp_proto import master_pb2
from dpp_server import records, state
from dpp_server.records import ClientFigures, StageSeconds, WorkerCounters
from storage import SplitInfo

# Every record with a proto form, and its message.
PAIRS: list[tuple[type[Any], type[Message]]] = [
    (StageSeconds, master_pb2.StageSeconds),
    (WorkerCounters, master_pb2.WorkerCounters),
    (ClientFigures, master_pb2.ClientStats),
    (state.PlanSummary, master_pb2.SessionPlan),
    (SplitInfo, master_pb2.Split),
]

SPLIT = SplitInfo("ab12", "t/ds=1/part-0.parquet", 4096, (0, 1, 2), 300, {"ds": "1"})
SAMPLES: dict[type[Any], Any] = {
    StageSeconds: StageSeconds(read_s=1.5, filter_s=0.25, idle_s=3.0),
    WorkerCounters: WorkerCounters(rows_read=10, rows_out=9, batches_out=2, bytes_out=1 << 40),
    ClientFigures: ClientFigures(3, 300, 9_000, 0.5, 0.25, 10.0),
    state.PlanSummary: state.PlanSummary(4, 2, 8, 1000, 1, 0.125),
    SplitInfo: SPLIT,
}


@pytest.mark.parametrize(("record", "message"), PAIRS, ids=lambda t: t.__name__)
def test_every_proto_field_has_a_dataclass_field_and_back(
    record: type[Any], message: type[Message]
) -> None:
    proto_fields = [f.name for f in message.DESCRIPTOR.fields]
    record_fields = [f.name for f in dataclasses.fields(record)]
    assert sorted(proto_fields) == sorted(record_fields)


@pytest.mark.parametrize(("record", "message"), PAIRS, ids=lambda t: t.__name__)
def test_records_round_trip_through_proto_and_json(
    record: type[Any], message: type[Message]
) -> None:
    sample = SAMPLES[record]
    as_proto = records.to_proto(message, sample)
    assert isinstance(as_proto, message)
    assert records.from_proto(record, as_proto) == sample
    assert records.from_json(record, records.to_json(sample)) == sample


def test_repeated_and_map_fields_come_back_as_tuples_and_dicts() -> None:
    back = records.split_from_proto(records.split_to_proto(SPLIT))
    assert back.row_groups == (0, 1, 2) and isinstance(back.row_groups, tuple)
    assert back.partition == {"ds": "1"} and isinstance(back.partition, dict)


def test_figures_from_proto_reads_the_client_stats_message() -> None:
    p = master_pb2.ClientStats(batches=3, rows=300, stall_s=0.5, wall_s=10.0)
    assert records.figures_from_proto(p) == ClientFigures(3, 300, 0, 0.5, 0.0, 10.0)


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        ({"num_splits": 1}, KeyError, "missing field(s)"),
        ({**records.to_json(SAMPLES[state.PlanSummary]), "extra": 1}, TypeError, "unknown"),
        (
            {**records.to_json(SAMPLES[state.PlanSummary]), "num_rows": "many"},
            TypeError,
            "PlanSummary.num_rows: expected int, got str 'many'",
        ),
        (
            {**records.to_json(SAMPLES[state.PlanSummary]), "num_files": True},
            TypeError,
            "PlanSummary.num_files: expected int",
        ),
    ],
)
def test_from_json_names_the_bad_field(data: Any, error: type[Exception], text: str) -> None:
    with pytest.raises(error) as excinfo:
        records.from_json(state.PlanSummary, data)
    assert text in str(excinfo.value)
