"""remus: a job broker between clients and worker processes over ZeroMQ."""

from remus.errors import (
    BrokerStoppedError,
    BusyError,
    FileError,
    ForbiddenError,
    JobExpiredError,
    JobFailedError,
    JobNotFinishedError,
    JobNotRunningError,
    JobTerminatedError,
    NoWorkerError,
    ProtocolError,
    RemusError,
    ServerError,
    TimeoutError,
    UnknownJobError,
    WrongEndpointError,
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
    "BrokerStoppedError",
    "BusyError",
    "FileError",
    "FileHandle",
    "ForbiddenError",
    "IOType",
    "Job",
    "JobExpiredError",
    "JobFailedError",
    "JobFileRequest",
    "JobFileResult",
    "JobNotFinishedError",
    "JobNotRunningError",
    "JobProgress",
    "JobRequirements",
    "JobResult",
    "JobStatus",
    "JobSubmission",
    "JobTerminatedError",
    "NoWorkerError",
    "ProtocolError",
    "RemusError",
    "ServerError",
    "Status",
    "TimeoutError",
    "UnknownJobError",
    "WrongEndpointError",
]
