"""remus: a job broker between clients and worker processes over ZeroMQ."""

from remus.errors import (
    BusyError,
    FileError,
    JobExpiredError,
    JobFailedError,
    JobNotFinishedError,
    JobTerminatedError,
    ProtocolError,
    RemusError,
    ServerError,
    TimeoutError,
    UnknownJobError,
)
from remus.files import JobFileRequest, JobFileResult
from remus.types import (
    FileHandle,
    IOType,
    Job,
    JobProgress,
    JobRequirements,
    JobResult,
    JobStatus,
    JobSubmission,
    Status,
)

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "FileError",
    "FileHandle",
    "IOType",
    "Job",
    "JobExpiredError",
    "JobFailedError",
    "JobFileRequest",
    "JobFileResult",
    "JobNotFinishedError",
    "JobProgress",
    "JobRequirements",
    "JobResult",
    "JobStatus",
    "JobSubmission",
    "JobTerminatedError",
    "ProtocolError",
    "RemusError",
    "ServerError",
    "Status",
    "TimeoutError",
    "UnknownJobError",
]
