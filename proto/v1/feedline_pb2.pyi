from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollateOptions(_message.Message):
    __slots__ = ("label_policy", "label_format", "max_length", "truncation", "padding", "pad_to_multiple_of", "train_on_last_turn_only", "mask_reasoning_content", "answer_only", "on_zero_labels", "overlong", "pixel_dtype", "packing")
    LABEL_POLICY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    PAD_TO_MULTIPLE_OF_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_LAST_TURN_ONLY_FIELD_NUMBER: _ClassVar[int]
    MASK_REASONING_CONTENT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ONLY_FIELD_NUMBER: _ClassVar[int]
    ON_ZERO_LABELS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_FIELD_NUMBER: _ClassVar[int]
    PIXEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    label_policy: str
    label_format: str
    max_length: int
    truncation: str
    padding: str
    pad_to_multiple_of: int
    train_on_last_turn_only: bool
    mask_reasoning_content: bool
    answer_only: bool
    on_zero_labels: str
    overlong: str
    pixel_dtype: str
    packing: _struct_pb2.Struct
    def __init__(self, label_policy: _Optional[str] = ..., label_format: _Optional[str] = ..., max_length: _Optional[int] = ..., truncation: _Optional[str] = ..., padding: _Optional[str] = ..., pad_to_multiple_of: _Optional[int] = ..., train_on_last_turn_only: _Optional[bool] = ..., mask_reasoning_content: _Optional[bool] = ..., answer_only: _Optional[bool] = ..., on_zero_labels: _Optional[str] = ..., overlong: _Optional[str] = ..., pixel_dtype: _Optional[str] = ..., packing: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CollateRequest(_message.Message):
    __slots__ = ("processor", "fingerprint", "options", "samples", "batch_index", "max_frame_bytes", "first_row", "samples_msgpack", "ragged")
    PROCESSOR_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_MSGPACK_FIELD_NUMBER: _ClassVar[int]
    RAGGED_FIELD_NUMBER: _ClassVar[int]
    processor: str
    fingerprint: str
    options: CollateOptions
    samples: _containers.RepeatedScalarFieldContainer[bytes]
    batch_index: int
    max_frame_bytes: int
    first_row: int
    samples_msgpack: bytes
    ragged: bool
    def __init__(self, processor: _Optional[str] = ..., fingerprint: _Optional[str] = ..., options: _Optional[_Union[CollateOptions, _Mapping]] = ..., samples: _Optional[_Iterable[bytes]] = ..., batch_index: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., first_row: _Optional[int] = ..., samples_msgpack: _Optional[bytes] = ..., ragged: _Optional[bool] = ...) -> None: ...

class CollateResponse(_message.Message):
    __slots__ = ("batch_index", "fingerprint", "frames")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    fingerprint: str
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, batch_index: _Optional[int] = ..., fingerprint: _Optional[str] = ..., frames: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    def __init__(self, frame: _Optional[bytes] = ...) -> None: ...

class DatasetRef(_message.Message):
    __slots__ = ("path", "fingerprint", "weight", "repeat")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    path: str
    fingerprint: str
    weight: float
    repeat: float
    def __init__(self, path: _Optional[str] = ..., fingerprint: _Optional[str] = ..., weight: _Optional[float] = ..., repeat: _Optional[float] = ...) -> None: ...

class StreamDatasetRequest(_message.Message):
    __slots__ = ("dataset", "processor", "processor_fingerprint", "options", "seed", "epoch", "shuffle", "batch_size", "drop_last", "rank", "world_size", "start_batch_index", "max_batches", "max_frame_bytes", "mixture", "ragged")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PROCESSOR_FIELD_NUMBER: _ClassVar[int]
    PROCESSOR_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROP_LAST_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIXTURE_FIELD_NUMBER: _ClassVar[int]
    RAGGED_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetRef
    processor: str
    processor_fingerprint: str
    options: CollateOptions
    seed: int
    epoch: int
    shuffle: bool
    batch_size: int
    drop_last: bool
    rank: int
    world_size: int
    start_batch_index: int
    max_batches: int
    max_frame_bytes: int
    mixture: _containers.RepeatedCompositeFieldContainer[DatasetRef]
    ragged: bool
    def __init__(self, dataset: _Optional[_Union[DatasetRef, _Mapping]] = ..., processor: _Optional[str] = ..., processor_fingerprint: _Optional[str] = ..., options: _Optional[_Union[CollateOptions, _Mapping]] = ..., seed: _Optional[int] = ..., epoch: _Optional[int] = ..., shuffle: _Optional[bool] = ..., batch_size: _Optional[int] = ..., drop_last: _Optional[bool] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., start_batch_index: _Optional[int] = ..., max_batches: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., mixture: _Optional[_Iterable[_Union[DatasetRef, _Mapping]]] = ..., ragged: _Optional[bool] = ...) -> None: ...

class ListProcessorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProcessorInfo(_message.Message):
    __slots__ = ("name", "class_name", "family", "fingerprint", "defaults", "info_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    class_name: str
    family: str
    fingerprint: str
    defaults: _struct_pb2.Struct
    info_json: bytes
    def __init__(self, name: _Optional[str] = ..., class_name: _Optional[str] = ..., family: _Optional[str] = ..., fingerprint: _Optional[str] = ..., defaults: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., info_json: _Optional[bytes] = ...) -> None: ...

class ListProcessorsResponse(_message.Message):
    __slots__ = ("processors",)
    PROCESSORS_FIELD_NUMBER: _ClassVar[int]
    processors: _containers.RepeatedCompositeFieldContainer[ProcessorInfo]
    def __init__(self, processors: _Optional[_Iterable[_Union[ProcessorInfo, _Mapping]]] = ...) -> None: ...
