from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamBatchesRequest(_message.Message):
    __slots__ = ("session_id", "rank", "auth_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    rank: int
    auth_token: str
    def __init__(self, session_id: _Optional[str] = ..., rank: _Optional[int] = ..., auth_token: _Optional[str] = ...) -> None: ...

class Section(_message.Message):
    __slots__ = ("name", "offset", "length")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    length: int
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class FrameHeader(_message.Message):
    __slots__ = ("session_id", "epoch", "rank", "split_id", "batch_seq", "num_rows", "last_in_split", "sections", "error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_IN_SPLIT_FIELD_NUMBER: _ClassVar[int]
    SECTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    epoch: int
    rank: int
    split_id: str
    batch_seq: int
    num_rows: int
    last_in_split: bool
    sections: _containers.RepeatedCompositeFieldContainer[Section]
    error: str
    def __init__(self, session_id: _Optional[str] = ..., epoch: _Optional[int] = ..., rank: _Optional[int] = ..., split_id: _Optional[str] = ..., batch_seq: _Optional[int] = ..., num_rows: _Optional[int] = ..., last_in_split: _Optional[bool] = ..., sections: _Optional[_Iterable[_Union[Section, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...
