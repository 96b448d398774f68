from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_KIND_UNSPECIFIED: _ClassVar[FeatureKind]
    FEATURE_KIND_DENSE: _ClassVar[FeatureKind]
    FEATURE_KIND_SPARSE: _ClassVar[FeatureKind]
FEATURE_KIND_UNSPECIFIED: FeatureKind
FEATURE_KIND_DENSE: FeatureKind
FEATURE_KIND_SPARSE: FeatureKind

class OpSpec(_message.Message):
    __slots__ = ("op", "params")
    OP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    op: str
    params: _struct_pb2.Struct
    def __init__(self, op: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class FeatureSpec(_message.Message):
    __slots__ = ("name", "source", "kind", "ops", "dedup_group")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_GROUP_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    kind: FeatureKind
    ops: _containers.RepeatedCompositeFieldContainer[OpSpec]
    dedup_group: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., kind: _Optional[_Union[FeatureKind, str]] = ..., ops: _Optional[_Iterable[_Union[OpSpec, _Mapping]]] = ..., dedup_group: _Optional[str] = ...) -> None: ...

class SessionSpec(_message.Message):
    __slots__ = ("table_uri", "storage_options", "partition_filter", "row_filter", "features", "label", "weight", "passthrough", "batch_size", "epochs", "seed", "world_size", "target_split_rows", "shuffle", "deterministic", "max_splits_in_flight", "negative_downsample_rate", "sample_rate", "sample_key", "dedup_min_share", "stats", "share")
    class StorageOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TABLE_URI_FIELD_NUMBER: _ClassVar[int]
    STORAGE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FILTER_FIELD_NUMBER: _ClassVar[int]
    ROW_FILTER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TARGET_SPLIT_ROWS_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    MAX_SPLITS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_DOWNSAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEY_FIELD_NUMBER: _ClassVar[int]
    DEDUP_MIN_SHARE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    table_uri: str
    storage_options: _containers.ScalarMap[str, str]
    partition_filter: str
    row_filter: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureSpec]
    label: str
    weight: str
    passthrough: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    epochs: int
    seed: int
    world_size: int
    target_split_rows: int
    shuffle: bool
    deterministic: bool
    max_splits_in_flight: int
    negative_downsample_rate: float
    sample_rate: float
    sample_key: str
    dedup_min_share: float
    stats: StatsOptions
    share: bool
    def __init__(self, table_uri: _Optional[str] = ..., storage_options: _Optional[_Mapping[str, str]] = ..., partition_filter: _Optional[str] = ..., row_filter: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureSpec, _Mapping]]] = ..., label: _Optional[str] = ..., weight: _Optional[str] = ..., passthrough: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[int] = ..., seed: _Optional[int] = ..., world_size: _Optional[int] = ..., target_split_rows: _Optional[int] = ..., shuffle: _Optional[bool] = ..., deterministic: _Optional[bool] = ..., max_splits_in_flight: _Optional[int] = ..., negative_downsample_rate: _Optional[float] = ..., sample_rate: _Optional[float] = ..., sample_key: _Optional[str] = ..., dedup_min_share: _Optional[float] = ..., stats: _Optional[_Union[StatsOptions, _Mapping]] = ..., share: _Optional[bool] = ...) -> None: ...

class StatsOptions(_message.Message):
    __slots__ = ("sample_rate", "collisions")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    COLLISIONS_FIELD_NUMBER: _ClassVar[int]
    sample_rate: float
    collisions: bool
    def __init__(self, sample_rate: _Optional[float] = ..., collisions: _Optional[bool] = ...) -> None: ...
