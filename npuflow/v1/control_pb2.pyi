from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCESS_STATE_UNSPECIFIED: _ClassVar[ProcessState]
    PROCESS_STATE_RUNNING: _ClassVar[ProcessState]
    PROCESS_STATE_STOPPING: _ClassVar[ProcessState]
    PROCESS_STATE_STOPPED: _ClassVar[ProcessState]
PROCESS_STATE_UNSPECIFIED: ProcessState
PROCESS_STATE_RUNNING: ProcessState
PROCESS_STATE_STOPPING: ProcessState
PROCESS_STATE_STOPPED: ProcessState

class StartWorker(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class StopWorker(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListWorkers(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ToSupervisor(_message.Message):
    __slots__ = ("seq", "start", "stop", "list")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start: StartWorker
    stop: StopWorker
    list: ListWorkers
    def __init__(self, seq: _Optional[int] = ..., start: _Optional[_Union[StartWorker, _Mapping]] = ..., stop: _Optional[_Union[StopWorker, _Mapping]] = ..., list: _Optional[_Union[ListWorkers, _Mapping]] = ...) -> None: ...

class WorkerProcess(_message.Message):
    __slots__ = ("model", "state", "pid", "exit_code", "requested", "started_unix")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: ProcessState
    pid: int
    exit_code: int
    requested: bool
    started_unix: float
    def __init__(self, model: _Optional[str] = ..., state: _Optional[_Union[ProcessState, str]] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., requested: _Optional[bool] = ..., started_unix: _Optional[float] = ...) -> None: ...

class WorkerList(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerProcess]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerProcess, _Mapping]]] = ...) -> None: ...

class FromSupervisor(_message.Message):
    __slots__ = ("seq", "worker", "workers", "exited", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    worker: WorkerProcess
    workers: WorkerList
    exited: WorkerProcess
    error: str
    def __init__(self, seq: _Optional[int] = ..., worker: _Optional[_Union[WorkerProcess, _Mapping]] = ..., workers: _Optional[_Union[WorkerList, _Mapping]] = ..., exited: _Optional[_Union[WorkerProcess, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...
