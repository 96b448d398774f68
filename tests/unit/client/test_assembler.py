"""EpochAssembler: dedup, completion, re-batching and epoch boundaries, frame by frame."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from client_frames import header, make_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from dpp_client.assembler import EpochAssembler, ReadyBatch
from dpp_client.errors import WorkerDataError


def rows(n: int, start: int) -> pa.RecordBatch:
    return make_rows(n, dense_dim=2, sparse_names=("s",), row_id_start=start, seed=start)


def ids(out: list[ReadyBatch[object]]) -> list[list[int]]:
    """Row ids of the batches the trainer gets (not the remainder dropped by drop_last)."""
    return [b.rb.column("extra.row_id").to_pylist() for b in out if not b.dropped]


def flat(out: list[ReadyBatch[object]]) -> list[int]:
    return [i for batch in ids(out) for i in batch]


def make(bs: int = 4, drop_last: bool = False) -> EpochAssembler[object]:
    return EpochAssembler(bs, drop_last=drop_last, session_id="s1", rank=0)


def test_worked_example_from_the_docstring() -> None:
    asm = make()
    assert asm.begin_epoch(0, ["A", "B"]) == []
    out = asm.push(header("A", 0), rows(4, 0), prepared="A0")
    assert ids(out) == [[0, 1, 2, 3]] and out[0].prepared == "A0"
    assert asm.push(header("A", 1, last=True), rows(3, 4)) == []
    assert asm.missing_splits == 1 and asm.held_rows == 3
    assert ids(asm.push(header("B", 0), rows(4, 7))) == [[7, 8, 9, 10]]
    assert asm.push(header("B", 0), rows(4, 7)) == []  # re-produced after a worker died
    assert asm.duplicates_dropped == 1
    out = asm.push(header("B", 1, last=True), rows(2, 11))
    assert ids(out) == [[4, 5, 6, 11], [12]]
    assert out[0].prepared is None
    assert asm.done and asm.missing_splits == 0 and asm.held_rows == 0


def test_full_frames_pass_through_unchanged() -> None:
    asm = make()
    asm.begin_epoch(0, ["A"])
    rb = rows(4, 0)
    out = asm.push(header("A", 0), rb)
    assert out[0].rb is rb


def test_out_of_order_seqs_complete_only_when_all_arrived() -> None:
    asm = make()
    asm.begin_epoch(0, ["A"])
    asm.push(header("A", 2, last=True), rows(1, 8))
    assert not asm.done
    asm.push(header("A", 0), rows(4, 0))
    assert not asm.done
    out = asm.push(header("A", 1), rows(4, 4))
    assert asm.done
    assert ids(out) == [[4, 5, 6, 7], [8]]


def test_partials_rebatch_to_exact_batch_size() -> None:
    asm = make(bs=5)
    splits = [f"S{i}" for i in range(6)]
    asm.begin_epoch(0, splits)
    out: list[ReadyBatch[object]] = []
    start = 0
    for s in splits:
        out += asm.push(header(s, 0, last=True), rows(3, start))
        start += 3
    sizes = [b.rb.num_rows for b in out]
    assert sizes == [5, 5, 5, 3]
    assert flat(out) == list(range(18))


def test_drop_last_drops_only_the_remainder() -> None:
    asm = make(bs=5, drop_last=True)
    asm.begin_epoch(0, ["A", "B"])
    out = asm.push(header("A", 0, last=True), rows(3, 0))
    out += asm.push(header("B", 0, last=True), rows(4, 3))
    assert ids(out) == [[0, 1, 2, 3, 4]]
    assert asm.done and asm.held_rows == 0


def test_remainder_delivered_without_drop_last() -> None:
    asm = make(bs=5)
    asm.begin_epoch(0, ["A"])
    assert ids(asm.push(header("A", 0, last=True), rows(2, 0))) == [[0, 1]]


def test_empty_split_frame_completes_the_split() -> None:
    asm = make()
    asm.begin_epoch(0, ["A", "B"])
    asm.push(header("A", 0, last=True), None)
    assert asm.missing_splits == 1
    out = asm.push(header("B", 0), rows(4, 0))
    out += asm.push(header("B", 1, last=True), None)  # separate end marker
    assert asm.done
    assert ids(out) == [[0, 1, 2, 3]]


def test_epoch_without_splits_is_done_at_once() -> None:
    asm = make()
    assert asm.begin_epoch(0, []) == []
    assert asm.done


def test_next_epoch_frames_kept_aside_and_older_dropped() -> None:
    asm = make()
    asm.begin_epoch(1, ["A"])
    assert asm.push(header("A", 0, epoch=2), rows(4, 100)) == []
    assert asm.push(header("A", 0, epoch=0), rows(4, 0)) == []
    assert asm.stale_dropped == 1 and asm.frames_aside == 1
    out = asm.push(header("A", 0, epoch=1, last=True), rows(4, 10))
    assert ids(out) == [[10, 11, 12, 13]] and asm.done
    out = asm.begin_epoch(2, ["A", "B"])
    assert ids(out) == [[100, 101, 102, 103]]
    assert asm.frames_aside == 0 and not asm.done


def test_frames_before_the_first_epoch_are_kept() -> None:
    asm = make()
    assert asm.push(header("A", 0, last=True), rows(4, 0)) == []
    assert ids(asm.begin_epoch(0, ["A"])) == [[0, 1, 2, 3]]
    assert asm.done


def test_skipping_an_epoch_drops_its_kept_frames() -> None:
    asm = make()
    asm.push(header("A", 0, epoch=0, last=True), rows(4, 0))
    asm.begin_epoch(1, ["A"])
    assert asm.frames_aside == 0 and asm.stale_dropped == 1


def test_frames_after_completion_are_duplicates() -> None:
    asm = make()
    asm.begin_epoch(0, ["A"])
    asm.push(header("A", 0, last=True), rows(4, 0))
    assert asm.push(header("A", 0, last=True), rows(4, 0)) == []
    assert asm.duplicates_dropped == 1


def test_unknown_split_other_rank_and_session_are_dropped() -> None:
    asm = make()
    asm.begin_epoch(0, ["A"])
    assert asm.push(header("Z", 0, last=True), rows(4, 0)) == []
    assert asm.push(header("A", 0, rank=1, last=True), rows(4, 0)) == []
    assert asm.push(header("A", 0, session_id="other", last=True), rows(4, 0)) == []
    assert not asm.done


def test_error_frame_raises_with_the_workers_message() -> None:
    asm = make()
    asm.begin_epoch(0, ["A"])
    with pytest.raises(
        WorkerDataError, match=r"split A \(epoch 0, rank 0, session s1\): disk gone"
    ) as info:
        asm.push(header("A", 0, error="disk gone"), None)
    assert info.value.split_id == "A" and info.value.epoch == 0


def test_error_frame_of_a_later_epoch_raises_when_it_begins() -> None:
    asm = make()
    asm.begin_epoch(0, ["A"])
    asm.push(header("A", 0, epoch=1, error="bad file"), None)
    with pytest.raises(WorkerDataError, match="bad file"):
        asm.begin_epoch(1, ["A"])


def test_oversized_frame_is_cut() -> None:
    asm = make(bs=4)
    asm.begin_epoch(0, ["A"])
    out = asm.push(header("A", 0, last=True), rows(9, 0))
    assert [b.rb.num_rows for b in out] == [4, 4, 1]


def test_invalid_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        EpochAssembler(0)


@settings(max_examples=60, deadline=None)
@given(
    split_rows=st.lists(st.integers(0, 23), min_size=0, max_size=6),
    bs=st.integers(1, 9),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_row_exactly_once_under_duplicates_and_shuffling(
    split_rows: list[int], bs: int, drop_last: bool, seed: int
) -> None:
    """Splits cut into batches, frames duplicated and shuffled: rows arrive exactly once."""
    rng = random.Random(seed)
    frames = []
    start = 0
    for i, n in enumerate(split_rows):
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        if not sizes:
            frames.append((header(f"S{i}", 0, last=True), None))
        for seq, size in enumerate(sizes):
            rb = rows(size, start)
            start += size
            frames.append((header(f"S{i}", seq, last=seq == len(sizes) - 1), rb))
    frames += rng.sample(frames, k=len(frames) // 2)  # re-produced frames
    rng.shuffle(frames)
    asm: EpochAssembler[object] = EpochAssembler(bs, drop_last=drop_last, session_id="s1")
    out = asm.begin_epoch(0, [f"S{i}" for i in range(len(split_rows))])
    for h, rb in frames:
        out += asm.push(h, rb)
    assert asm.done
    got = sorted(flat(out))
    sizes = [b.rb.num_rows for b in out if not b.dropped]
    assert all(s == bs for s in sizes[:-1])
    if drop_last:
        assert all(s == bs for s in sizes)
        assert len(got) == start - start % bs
        assert len(set(got)) == len(got)
    else:
        assert got == list(range(start))
