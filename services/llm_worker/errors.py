"""The one error type for a request the worker refuses or ends early."""
from __future__ import annotations

from npuflow.v1 import common_pb2


class RequestError(Exception):
    def __init__(self, code: int, message: str, param: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def to_proto(self) -> common_pb2.Error:
        return common_pb2.Error(code=self.code, message=self.message, param=self.param)


def invalid(message: str, param: str) -> RequestError:
    return RequestError(common_pb2.ERROR_CODE_INVALID_ARGUMENT, message, param)
