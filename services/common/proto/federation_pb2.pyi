from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("client_id", "shard_index", "num_shards")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    shard_index: int
    num_shards: int
    def __init__(self, client_id: _Optional[str] = ..., shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("kind", "round", "task_id", "payload_bytes", "layout", "deadline_s")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TaskHeader.Kind]
        TRAIN: _ClassVar[TaskHeader.Kind]
        WAIT: _ClassVar[TaskHeader.Kind]
        DONE: _ClassVar[TaskHeader.Kind]
    KIND_UNSPECIFIED: TaskHeader.Kind
    TRAIN: TaskHeader.Kind
    WAIT: TaskHeader.Kind
    DONE: TaskHeader.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    kind: TaskHeader.Kind
    round: int
    task_id: str
    payload_bytes: int
    layout: str
    deadline_s: float
    def __init__(self, kind: _Optional[_Union[TaskHeader.Kind, str]] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., layout: _Optional[str] = ..., deadline_s: _Optional[float] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("client_id", "task_id", "round", "payload_bytes", "layout", "metrics", "update_weight")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    task_id: str
    round: int
    payload_bytes: int
    layout: str
    metrics: _containers.ScalarMap[str, float]
    update_weight: float
    def __init__(self, client_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., layout: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., update_weight: _Optional[float] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: bool = ..., detail: _Optional[str] = ...) -> None: ...
