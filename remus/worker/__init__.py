"""Worker side: ``Worker`` and the ``Job`` it hands to your code."""

from remus.worker.job import Job
from remus.worker.runner import ProcessJob
from remus.worker.worker import Worker

__all__ = ["Job", "ProcessJob", "Worker"]
