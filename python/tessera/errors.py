"""Errors raised by the Tessera client.

Every failure reported by the cluster (or by the C++ client on the caller's behalf) raises a
subclass of :class:`Error` named after its gRPC status code, carrying the code and the server's
message. The subclasses also derive from the closest Python built-in exception, so ordinary
handlers work: ``except ValueError`` catches a wrong dimension (``InvalidArgumentError``),
``except LookupError`` an unknown table (``NotFoundError``), ``except ConnectionError`` a
server that stays unreachable (``UnavailableError``).
"""

# gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html), in order.
CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)


class Error(Exception):
    """A call failed. ``code`` is the gRPC status code (int), ``code_name`` its name (e.g.
    ``"NOT_FOUND"``), ``message`` the server's (or client's) explanation."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.code_name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else str(code)
        self.message = message

    def __str__(self):
        return f"{self.code_name}: {self.message}"


class CancelledError(Error): pass
class UnknownError(Error): pass
class InvalidArgumentError(Error, ValueError): pass
class DeadlineExceededError(Error, TimeoutError): pass
class NotFoundError(Error, LookupError): pass
class AlreadyExistsError(Error): pass
class PermissionDeniedError(Error, PermissionError): pass
class ResourceExhaustedError(Error): pass
class FailedPreconditionError(Error): pass
class AbortedError(Error): pass
class OutOfRangeError(Error, IndexError): pass
class UnimplementedError(Error, NotImplementedError): pass
class InternalError(Error): pass
class UnavailableError(Error, ConnectionError): pass
class DataLossError(Error): pass
class UnauthenticatedError(Error): pass

_BY_CODE = {
    1: CancelledError, 2: UnknownError, 3: InvalidArgumentError, 4: DeadlineExceededError,
    5: NotFoundError, 6: AlreadyExistsError, 7: PermissionDeniedError,
    8: ResourceExhaustedError, 9: FailedPreconditionError, 10: AbortedError,
    11: OutOfRangeError, 12: UnimplementedError, 13: InternalError, 14: UnavailableError,
    15: DataLossError, 16: UnauthenticatedError,
}


def error_from_status(code, message):
    """The exception for a non-OK status (used by the native module)."""
    return _BY_CODE.get(code, Error)(code, message)
