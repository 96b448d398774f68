"""Fuzz targets: what a hostile peer or user controls, and the only errors each may raise.

Each target takes raw bytes, feeds them to one parser, and lets through only the parser's
documented error (a clear message); anything else -- another exception type, a crash, a
hang -- is a finding (atheris reports it with the input). Targets:

* ``frame``: the client's frame decoder (:func:`dpp_client.frames.decode_frame`): what a
  broken or hostile worker sends. Only ``FrameError``; a decoded batch must pass Arrow's full
  validation and convert to tensors (so no later access reads out of bounds).
* ``spec_yaml``: the client's YAML/JSON spec reader, then the master's proto reader.
* ``spec_proto``: the master's SessionSpec reader (:func:`dpp_server.spec.spec_from_proto`)
  on arbitrary proto bytes.
* ``filter``: the filter parser (:func:`storage.filters.parse_filter`).
* ``journal``: the journal reader (:func:`dpp_server.journal.decode` per line, and
  :meth:`FileJournal.replay` over a file).
* ``token_file``: the token file parser (:meth:`dpp_server.auth.TokenFile.parse`).

Seeds for each live in :func:`seeds`; ``python -m tests.fuzz.run TARGET`` runs one under atheris.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa


def frame(data: bytes) -> None:
    from dpp_client.batch import batch_from_arrow
    from dpp_client.errors import FrameError
    from dpp_client.frames import decode_frame

    try:
        _, batch = decode_frame(data)
    except FrameError:
        return
    if batch is not None:
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise AssertionError(f"decode_frame accepted an invalid batch: {exc}") from exc
        try:
            batch_from_arrow(batch)
        except FrameError:
            return


def spec_yaml(data: bytes) -> None:
    import yaml

    from dpp_client.errors import SpecRejectedError
    from dpp_client.spec import SessionSpec
    from dpp_server.errors import SpecError
    from dpp_server.spec import spec_from_proto

    try:
        loaded = yaml.safe_load(data.decode("utf-8", "replace"))
    except yaml.YAMLError:
        return
    try:
        spec = SessionSpec.from_dict(loaded)
        proto = spec.to_proto()
    except SpecRejectedError:
        return
    try:
        spec_from_proto(proto)
    except SpecError:
        return


def spec_proto(data: bytes) -> None:
    from google.protobuf.message import DecodeError

    from dpp_proto import spec_pb2
    from dpp_server.errors import SpecError
    from dpp_server.spec import spec_from_proto

    message = spec_pb2.SessionSpec()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return
    try:
        spec_from_proto(message)
    except SpecError:
        return


def filter_text(data: bytes) -> None:
    from storage.errors import FilterError
    from storage.filters import parse_filter

    try:
        parse_filter(data.decode("utf-8", "replace"), "row_filter")
    except FilterError:
        return


def journal(data: bytes) -> None:
    from dpp_server import journal as journal_lib

    text = data.decode("utf-8", "replace")
    for line in text.splitlines():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            journal_lib.decode(line)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "journal.jsonl").write_bytes(data)
        try:
            list(journal_lib.FileJournal(folder).replay())
        except (ValueError, TypeError, KeyError):
            return


def token_file(data: bytes) -> None:
    from dpp_server.auth import TokenFile

    try:
        TokenFile.parse(data.decode("utf-8", "replace"))
    except ValueError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frame": frame,
    "spec_yaml": spec_yaml,
    "spec_proto": spec_proto,
    "filter": filter_text,
    "journal": journal,
    "token_file": token_file,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from, so mutations reach deep into each parser."""
    if target == "frame":
        return _frame_seeds()
    if target in ("spec_yaml", "spec_proto"):
        from dpp_client.spec import Feature, Op, SessionSpec

        spec = SessionSpec(
            table_uri="/data/t",
            row_filter="dense_0 > 0",
            features=(
                Feature("d0", "dense", "dense_0", ops=(Op("fill_null", {"value": 0.0}),)),
                Feature("s0", "sparse", "sparse_0", ops=(Op("first_x", {"x": 3}),)),
            ),
            label="label",
        )
        if target == "spec_proto":
            return [spec.to_proto().SerializeToString()]
        return [json.dumps(spec.to_dict()).encode(), b"table_uri: /t\nfeatures: []\n"]
    if target == "filter":
        return [b"ds >= '2026-01-02' AND label = 1", b"x IN (1, 2) OR NOT y IS NULL"]
    if target == "journal":
        from dpp_server import journal as journal_lib
        from dpp_server import state

        update = state.WorkerRegistered("w-1", "127.0.0.1:1", 2)
        return [(journal_lib.encode(update) + "\n").encode()]
    if target == "token_file":
        return [b"# c\n" + b"ab" * 32 + b" trainer,admin alice ads\n"]
    raise KeyError(target)


def _frame_seeds() -> list[bytes]:
    import numpy as np

    from dpp_proto import wire, worker_pb2

    schema = wire.wire_schema(["a", "b"], ["s0"], label=True, weight=False, extra={})
    rows = wire.assemble_wire_batch(
        schema,
        np.array([[0.5, 1.0], [2.0, 3.0]], dtype=np.float32),
        [
            pa.array([[1, 2], []], wire.SPARSE_TYPE),
            pa.array([0.0, 1.0], pa.float32()),
        ],
    )
    header = worker_pb2.FrameHeader(session_id="s", split_id="x", batch_seq=0, num_rows=2)
    end = worker_pb2.FrameHeader(session_id="s", split_id="x", batch_seq=1, last_in_split=True)
    encoder = wire.FrameEncoder()  # the packed layout with narrow list lengths
    offsets = wire.FrameEncoder(wire.WireOptions(narrow_lengths=False))
    return [encoder.encode(header, rows), offsets.encode(header, rows), encoder.encode_empty(end)]
