from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("name", "task")
    class TaskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., task: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
    __slots__ = ("kind", "round", "task_id", "payload_bytes", "layout", "deadline_s", "secure", "evaluate")
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
    SECURE_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    kind: TaskHeader.Kind
    round: int
    task_id: str
    payload_bytes: int
    layout: str
    deadline_s: float
    secure: SecureParams
    evaluate: bool
    def __init__(self, kind: _Optional[_Union[TaskHeader.Kind, str]] = ..., round: _Optional[int] = ..., task_id: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., layout: _Optional[str] = ..., deadline_s: _Optional[float] = ..., secure: _Optional[_Union[SecureParams, _Mapping]] = ..., evaluate: bool = ...) -> None: ...

class SecureParams(_message.Message):
    __slots__ = ("version", "clients", "threshold", "neighbours", "bits", "clip", "max_weight", "phase_timeout_s")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PHASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    clients: int
    threshold: int
    neighbours: int
    bits: int
    clip: float
    max_weight: int
    phase_timeout_s: float
    def __init__(self, version: _Optional[int] = ..., clients: _Optional[int] = ..., threshold: _Optional[int] = ..., neighbours: _Optional[int] = ..., bits: _Optional[int] = ..., clip: _Optional[float] = ..., max_weight: _Optional[int] = ..., phase_timeout_s: _Optional[float] = ...) -> None: ...

class SecureRequest(_message.Message):
    __slots__ = ("client_id", "task_id", "round", "advertise", "share", "unmask", "reveal")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    REVEAL_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    task_id: str
    round: int
    advertise: AdvertiseKeys
    share: ShareKeys
    unmask: UnmaskRequest
    reveal: RevealShares
    def __init__(self, client_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., advertise: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., share: _Optional[_Union[ShareKeys, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., reveal: _Optional[_Union[RevealShares, _Mapping]] = ...) -> None: ...

class SecureReply(_message.Message):
    __slots__ = ("roster", "relayed", "unmask", "revealed")
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    REVEALED_FIELD_NUMBER: _ClassVar[int]
    roster: Roster
    relayed: RelayedShares
    unmask: UnmaskReply
    revealed: bool
    def __init__(self, roster: _Optional[_Union[Roster, _Mapping]] = ..., relayed: _Optional[_Union[RelayedShares, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskReply, _Mapping]] = ..., revealed: bool = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("cipher_key", "mask_key")
    CIPHER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    cipher_key: bytes
    mask_key: bytes
    def __init__(self, cipher_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ...) -> None: ...

class PeerKeys(_message.Message):
    __slots__ = ("index", "cipher_key", "mask_key")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    index: int
    cipher_key: bytes
    mask_key: bytes
    def __init__(self, index: _Optional[int] = ..., cipher_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ...) -> None: ...

class Roster(_message.Message):
    __slots__ = ("index", "neighbours")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    index: int
    neighbours: _containers.RepeatedCompositeFieldContainer[PeerKeys]
    def __init__(self, index: _Optional[int] = ..., neighbours: _Optional[_Iterable[_Union[PeerKeys, _Mapping]]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("peer", "ciphertext")
    PEER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    peer: int
    ciphertext: bytes
    def __init__(self, peer: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class RelayedShares(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnmaskReply(_message.Message):
    __slots__ = ("survivors", "dropped")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class RevealShares(_message.Message):
    __slots__ = ("self_mask", "mask_key")
    SELF_MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    self_mask: _containers.RepeatedCompositeFieldContainer[Share]
    mask_key: _containers.RepeatedCompositeFieldContainer[Share]
    def __init__(self, self_mask: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., mask_key: _Optional[_Iterable[_Union[Share, _Mapping]]] = ...) -> None: ...

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
