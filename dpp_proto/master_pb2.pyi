from dpp_proto import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportSplitStatsRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "epoch", "rank", "split_id", "payload")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    epoch: int
    rank: int
    split_id: str
    payload: bytes
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., epoch: _Optional[int] = ..., rank: _Optional[int] = ..., split_id: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class ReportSplitStatsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class GetStatsReportRequest(_message.Message):
    __slots__ = ("session_id", "top_k", "boundary_buckets")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    top_k: int
    boundary_buckets: int
    def __init__(self, session_id: _Optional[str] = ..., top_k: _Optional[int] = ..., boundary_buckets: _Optional[int] = ...) -> None: ...

class DenseBoundaries(_message.Message):
    __slots__ = ("feature", "boundaries")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    feature: str
    boundaries: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, feature: _Optional[str] = ..., boundaries: _Optional[_Iterable[float]] = ...) -> None: ...

class GetStatsReportResponse(_message.Message):
    __slots__ = ("splits_total", "splits_done", "complete", "errors", "report_json", "boundaries")
    SPLITS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPLITS_DONE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    splits_total: int
    splits_done: int
    complete: bool
    errors: _containers.RepeatedScalarFieldContainer[str]
    report_json: str
    boundaries: _containers.RepeatedCompositeFieldContainer[DenseBoundaries]
    def __init__(self, splits_total: _Optional[int] = ..., splits_done: _Optional[int] = ..., complete: _Optional[bool] = ..., errors: _Optional[_Iterable[str]] = ..., report_json: _Optional[str] = ..., boundaries: _Optional[_Iterable[_Union[DenseBoundaries, _Mapping]]] = ...) -> None: ...

class SplitAck(_message.Message):
    __slots__ = ("split_id", "batches_consumed", "done")
    SPLIT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCHES_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    split_id: str
    batches_consumed: int
    done: bool
    def __init__(self, split_id: _Optional[str] = ..., batches_consumed: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class AckBatchesRequest(_message.Message):
    __slots__ = ("session_id", "rank", "epoch", "acks", "batches_received", "received_all", "client_stats", "reproduce")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_ALL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STATS_FIELD_NUMBER: _ClassVar[int]
    REPRODUCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    rank: int
    epoch: int
    acks: _containers.RepeatedCompositeFieldContainer[SplitAck]
    batches_received: int
    received_all: bool
    client_stats: ClientStats
    reproduce: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., rank: _Optional[int] = ..., epoch: _Optional[int] = ..., acks: _Optional[_Iterable[_Union[SplitAck, _Mapping]]] = ..., batches_received: _Optional[int] = ..., received_all: _Optional[bool] = ..., client_stats: _Optional[_Union[ClientStats, _Mapping]] = ..., reproduce: _Optional[_Iterable[str]] = ...) -> None: ...

class AckBatchesResponse(_message.Message):
    __slots__ = ("batch_limit", "limit_final")
    BATCH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FINAL_FIELD_NUMBER: _ClassVar[int]
    batch_limit: int
    limit_final: bool
    def __init__(self, batch_limit: _Optional[int] = ..., limit_final: _Optional[bool] = ...) -> None: ...

class UnregisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class UnregisterWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("spec", "session_name", "validate_only")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.SessionSpec
    session_name: str
    validate_only: bool
    def __init__(self, spec: _Optional[_Union[_spec_pb2.SessionSpec, _Mapping]] = ..., session_name: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "joined", "plan")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    joined: bool
    plan: SessionPlan
    def __init__(self, session_id: _Optional[str] = ..., joined: _Optional[bool] = ..., plan: _Optional[_Union[SessionPlan, _Mapping]] = ...) -> None: ...

class SessionPlan(_message.Message):
    __slots__ = ("num_splits", "num_files", "num_row_groups", "num_rows", "num_partitions", "planning_seconds", "snapshot_id")
    NUM_SPLITS_FIELD_NUMBER: _ClassVar[int]
    NUM_FILES_FIELD_NUMBER: _ClassVar[int]
    NUM_ROW_GROUPS_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    PLANNING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    num_splits: int
    num_files: int
    num_row_groups: int
    num_rows: int
    num_partitions: int
    planning_seconds: float
    snapshot_id: int
    def __init__(self, num_splits: _Optional[int] = ..., num_files: _Optional[int] = ..., num_row_groups: _Optional[int] = ..., num_rows: _Optional[int] = ..., num_partitions: _Optional[int] = ..., planning_seconds: _Optional[float] = ..., snapshot_id: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session_id", "spec", "plan", "progress", "tenant")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    spec: _spec_pb2.SessionSpec
    plan: SessionPlan
    progress: _containers.RepeatedCompositeFieldContainer[RankProgress]
    tenant: str
    def __init__(self, session_id: _Optional[str] = ..., spec: _Optional[_Union[_spec_pb2.SessionSpec, _Mapping]] = ..., plan: _Optional[_Union[SessionPlan, _Mapping]] = ..., progress: _Optional[_Iterable[_Union[RankProgress, _Mapping]]] = ..., tenant: _Optional[str] = ...) -> None: ...

class RankProgress(_message.Message):
    __slots__ = ("epoch", "rank", "splits_total", "splits_pending", "splits_leased", "splits_done")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPLITS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPLITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    SPLITS_LEASED_FIELD_NUMBER: _ClassVar[int]
    SPLITS_DONE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    rank: int
    splits_total: int
    splits_pending: int
    splits_leased: int
    splits_done: int
    def __init__(self, epoch: _Optional[int] = ..., rank: _Optional[int] = ..., splits_total: _Optional[int] = ..., splits_pending: _Optional[int] = ..., splits_leased: _Optional[int] = ..., splits_done: _Optional[int] = ...) -> None: ...

class BeginEpochRequest(_message.Message):
    __slots__ = ("session_id", "rank", "epoch", "restore", "consumed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    rank: int
    epoch: int
    restore: bool
    consumed: _containers.RepeatedCompositeFieldContainer[SplitAck]
    def __init__(self, session_id: _Optional[str] = ..., rank: _Optional[int] = ..., epoch: _Optional[int] = ..., restore: _Optional[bool] = ..., consumed: _Optional[_Iterable[_Union[SplitAck, _Mapping]]] = ...) -> None: ...

class BeginEpochResponse(_message.Message):
    __slots__ = ("split_ids", "epochs")
    SPLIT_IDS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    split_ids: _containers.RepeatedScalarFieldContainer[str]
    epochs: int
    def __init__(self, split_ids: _Optional[_Iterable[str]] = ..., epochs: _Optional[int] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("address", "pipeline_threads", "data_address")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_THREADS_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    pipeline_threads: int
    data_address: str
    def __init__(self, address: _Optional[str] = ..., pipeline_threads: _Optional[int] = ..., data_address: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id", "heartbeat_interval_s", "lease_timeout_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_interval_s: float
    lease_timeout_s: float
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., lease_timeout_s: _Optional[float] = ...) -> None: ...

class StageSeconds(_message.Message):
    __slots__ = ("read_s", "filter_s", "transform_s", "batch_s", "serialize_s", "wait_consumer_s", "idle_s")
    READ_S_FIELD_NUMBER: _ClassVar[int]
    FILTER_S_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_S_FIELD_NUMBER: _ClassVar[int]
    SERIALIZE_S_FIELD_NUMBER: _ClassVar[int]
    WAIT_CONSUMER_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    read_s: float
    filter_s: float
    transform_s: float
    batch_s: float
    serialize_s: float
    wait_consumer_s: float
    idle_s: float
    def __init__(self, read_s: _Optional[float] = ..., filter_s: _Optional[float] = ..., transform_s: _Optional[float] = ..., batch_s: _Optional[float] = ..., serialize_s: _Optional[float] = ..., wait_consumer_s: _Optional[float] = ..., idle_s: _Optional[float] = ...) -> None: ...

class WorkerCounters(_message.Message):
    __slots__ = ("rows_read", "rows_out", "batches_out", "bytes_out", "splits_done", "cache_hits", "cache_misses", "share_hits", "share_misses")
    ROWS_READ_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_FIELD_NUMBER: _ClassVar[int]
    BATCHES_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    SPLITS_DONE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    SHARE_HITS_FIELD_NUMBER: _ClassVar[int]
    SHARE_MISSES_FIELD_NUMBER: _ClassVar[int]
    rows_read: int
    rows_out: int
    batches_out: int
    bytes_out: int
    splits_done: int
    cache_hits: int
    cache_misses: int
    share_hits: int
    share_misses: int
    def __init__(self, rows_read: _Optional[int] = ..., rows_out: _Optional[int] = ..., batches_out: _Optional[int] = ..., bytes_out: _Optional[int] = ..., splits_done: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., share_hits: _Optional[int] = ..., share_misses: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "stage_seconds", "counters", "cached", "cached_unchanged")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CACHED_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    stage_seconds: StageSeconds
    counters: WorkerCounters
    cached: _containers.RepeatedCompositeFieldContainer[CachedSplits]
    cached_unchanged: bool
    def __init__(self, worker_id: _Optional[str] = ..., stage_seconds: _Optional[_Union[StageSeconds, _Mapping]] = ..., counters: _Optional[_Union[WorkerCounters, _Mapping]] = ..., cached: _Optional[_Iterable[_Union[CachedSplits, _Mapping]]] = ..., cached_unchanged: _Optional[bool] = ...) -> None: ...

class CachedSplits(_message.Message):
    __slots__ = ("output_digest", "split_ids")
    OUTPUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SPLIT_IDS_FIELD_NUMBER: _ClassVar[int]
    output_digest: str
    split_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, output_digest: _Optional[str] = ..., split_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("reregister",)
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    reregister: bool
    def __init__(self, reregister: _Optional[bool] = ...) -> None: ...

class AcquireSplitRequest(_message.Message):
    __slots__ = ("worker_id", "skip")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    skip: _containers.RepeatedCompositeFieldContainer[StreamKey]
    def __init__(self, worker_id: _Optional[str] = ..., skip: _Optional[_Iterable[_Union[StreamKey, _Mapping]]] = ...) -> None: ...

class StreamKey(_message.Message):
    __slots__ = ("session_id", "rank")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    rank: int
    def __init__(self, session_id: _Optional[str] = ..., rank: _Optional[int] = ...) -> None: ...

class SplitLease(_message.Message):
    __slots__ = ("session_id", "epoch", "rank", "split", "start_batch", "share_readers")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    START_BATCH_FIELD_NUMBER: _ClassVar[int]
    SHARE_READERS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    epoch: int
    rank: int
    split: Split
    start_batch: int
    share_readers: int
    def __init__(self, session_id: _Optional[str] = ..., epoch: _Optional[int] = ..., rank: _Optional[int] = ..., split: _Optional[_Union[Split, _Mapping]] = ..., start_batch: _Optional[int] = ..., share_readers: _Optional[int] = ...) -> None: ...

class Split(_message.Message):
    __slots__ = ("split_id", "path", "file_size", "row_groups", "num_rows", "partition", "row_offset", "row_limit", "renamed")
    class PartitionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPLIT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROW_GROUPS_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ROW_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RENAMED_FIELD_NUMBER: _ClassVar[int]
    split_id: str
    path: str
    file_size: int
    row_groups: _containers.RepeatedScalarFieldContainer[int]
    num_rows: int
    partition: _containers.ScalarMap[str, str]
    row_offset: int
    row_limit: int
    renamed: _containers.RepeatedCompositeFieldContainer[RenamedColumn]
    def __init__(self, split_id: _Optional[str] = ..., path: _Optional[str] = ..., file_size: _Optional[int] = ..., row_groups: _Optional[_Iterable[int]] = ..., num_rows: _Optional[int] = ..., partition: _Optional[_Mapping[str, str]] = ..., row_offset: _Optional[int] = ..., row_limit: _Optional[int] = ..., renamed: _Optional[_Iterable[_Union[RenamedColumn, _Mapping]]] = ...) -> None: ...

class RenamedColumn(_message.Message):
    __slots__ = ("column", "file_column")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    FILE_COLUMN_FIELD_NUMBER: _ClassVar[int]
    column: str
    file_column: str
    def __init__(self, column: _Optional[str] = ..., file_column: _Optional[str] = ...) -> None: ...

class AcquireSplitResponse(_message.Message):
    __slots__ = ("lease", "retry_after_ms")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    lease: SplitLease
    retry_after_ms: int
    def __init__(self, lease: _Optional[_Union[SplitLease, _Mapping]] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class ReportSplitProgressRequest(_message.Message):
    __slots__ = ("worker_id", "session_id", "epoch", "rank", "split_id", "batches_produced", "done", "error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCHES_PRODUCED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    epoch: int
    rank: int
    split_id: str
    batches_produced: int
    done: bool
    error: str
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., epoch: _Optional[int] = ..., rank: _Optional[int] = ..., split_id: _Optional[str] = ..., batches_produced: _Optional[int] = ..., done: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ReportSplitProgressResponse(_message.Message):
    __slots__ = ("lease_valid",)
    LEASE_VALID_FIELD_NUMBER: _ClassVar[int]
    lease_valid: bool
    def __init__(self, lease_valid: _Optional[bool] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "address", "seconds_since_heartbeat", "stage_seconds", "counters", "pipeline_threads", "data_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_THREADS_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    seconds_since_heartbeat: float
    stage_seconds: StageSeconds
    counters: WorkerCounters
    pipeline_threads: int
    data_address: str
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., seconds_since_heartbeat: _Optional[float] = ..., stage_seconds: _Optional[_Union[StageSeconds, _Mapping]] = ..., counters: _Optional[_Union[WorkerCounters, _Mapping]] = ..., pipeline_threads: _Optional[int] = ..., data_address: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class ClientStats(_message.Message):
    __slots__ = ("batches", "rows", "bytes_received", "stall_s", "decode_s", "wall_s")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STALL_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    batches: int
    rows: int
    bytes_received: int
    stall_s: float
    decode_s: float
    wall_s: float
    def __init__(self, batches: _Optional[int] = ..., rows: _Optional[int] = ..., bytes_received: _Optional[int] = ..., stall_s: _Optional[float] = ..., decode_s: _Optional[float] = ..., wall_s: _Optional[float] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "address", "pipeline_threads", "rows_per_s", "bytes_per_s", "stage_shares", "seconds_since_heartbeat", "cache_hits", "cache_misses")
    class StageSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_THREADS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    STAGE_SHARES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    pipeline_threads: int
    rows_per_s: float
    bytes_per_s: float
    stage_shares: _containers.ScalarMap[str, float]
    seconds_since_heartbeat: float
    cache_hits: int
    cache_misses: int
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., pipeline_threads: _Optional[int] = ..., rows_per_s: _Optional[float] = ..., bytes_per_s: _Optional[float] = ..., stage_shares: _Optional[_Mapping[str, float]] = ..., seconds_since_heartbeat: _Optional[float] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ...) -> None: ...

class RankStatus(_message.Message):
    __slots__ = ("session_id", "rank", "rows_per_s", "stall_share", "seconds_since_report")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    STALL_SHARE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_REPORT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    rank: int
    rows_per_s: float
    stall_share: float
    seconds_since_report: float
    def __init__(self, session_id: _Optional[str] = ..., rank: _Optional[int] = ..., rows_per_s: _Optional[float] = ..., stall_share: _Optional[float] = ..., seconds_since_report: _Optional[float] = ...) -> None: ...

class SessionFailures(_message.Message):
    __slots__ = ("session_id", "splits_failed", "last_error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    splits_failed: int
    last_error: str
    def __init__(self, session_id: _Optional[str] = ..., splits_failed: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class GetClusterStatusResponse(_message.Message):
    __slots__ = ("window_s", "workers", "ranks", "rows_per_s", "bytes_per_s", "stage_shares", "verdict_kind", "verdict", "desired_workers", "operator_target", "sessions", "splits_pending", "splits_leased", "splits_done", "session_failures", "session_ttl_s", "sessions_expired")
    class StageSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    STAGE_SHARES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_KIND_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_TARGET_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SPLITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    SPLITS_LEASED_FIELD_NUMBER: _ClassVar[int]
    SPLITS_DONE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FAILURES_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_S_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    window_s: float
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    ranks: _containers.RepeatedCompositeFieldContainer[RankStatus]
    rows_per_s: float
    bytes_per_s: float
    stage_shares: _containers.ScalarMap[str, float]
    verdict_kind: str
    verdict: str
    desired_workers: int
    operator_target: int
    sessions: int
    splits_pending: int
    splits_leased: int
    splits_done: int
    session_failures: _containers.RepeatedCompositeFieldContainer[SessionFailures]
    session_ttl_s: float
    sessions_expired: int
    def __init__(self, window_s: _Optional[float] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., ranks: _Optional[_Iterable[_Union[RankStatus, _Mapping]]] = ..., rows_per_s: _Optional[float] = ..., bytes_per_s: _Optional[float] = ..., stage_shares: _Optional[_Mapping[str, float]] = ..., verdict_kind: _Optional[str] = ..., verdict: _Optional[str] = ..., desired_workers: _Optional[int] = ..., operator_target: _Optional[int] = ..., sessions: _Optional[int] = ..., splits_pending: _Optional[int] = ..., splits_leased: _Optional[int] = ..., splits_done: _Optional[int] = ..., session_failures: _Optional[_Iterable[_Union[SessionFailures, _Mapping]]] = ..., session_ttl_s: _Optional[float] = ..., sessions_expired: _Optional[int] = ...) -> None: ...

class SetWorkerTargetRequest(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    def __init__(self, workers: _Optional[int] = ...) -> None: ...

class SetWorkerTargetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
