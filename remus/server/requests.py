"""Client requests: the answers the broker gives to what clients ask.

Part of the pure broker rules (no sockets, ``now`` passed in): each method takes one decoded
request from :class:`~remus.server.core.BrokerCore`'s dispatch table and puts its answer in the
core's outbox. The core owns the state; this module owns the questions (what can you serve,
take these jobs, where is this job, stop it, give me its result). Held requests (``progress``,
``collect``) live in :mod:`remus.server.holds`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from remus import files
from remus import protocol as p
from remus.errors import FileError
from remus.server.introspection import AT_QUEUED, SUBMITTED
from remus.server.limits import QUEUE
from remus.server.packages import Packer
from remus.server.records import JobRecord, job_key, rank_of
from remus.server.recovery import AFTER_OPTION, FILES_OPTION, OWNER_OPTION, saved_files
from remus.types import JobRequirements, Status, matches

if TYPE_CHECKING:
    from remus.server.core import BrokerCore


#: the most control messages one job keeps (each run of it gets all of them)
MAX_CONTROLS = 10_000


class Requests:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core

    def hello(self, client: bytes, msg: p.HelloRequest, now: float) -> None:
        core = self._core
        data = {"host": core.host, "max_message_bytes": core.config.max_message_bytes}
        core.reply(client, msg.rid, data)

    def io_types(self, client: bytes, msg: p.IoTypesRequest, now: float) -> None:
        core = self._core
        types = {w.reqs.io_type for w in core.workers.values()}
        if core.catalog is not None:
            types |= core.catalog.supported_io_types()
        core.reply(client, msg.rid, sorted(t.to_wire() for t in types))

    def can_mesh(self, client: bytes, msg: p.CanMeshRequest, now: float) -> None:
        core = self._core
        ok = any(matches(msg.requirements, w.reqs) for w in core.workers.values()) or (
            core.catalog is not None and core.catalog.can_mesh(msg.requirements)
        )
        core.reply(client, msg.rid, ok)

    def requirements(self, client: bytes, msg: p.RequirementsRequest, now: float) -> None:
        core = self._core
        found: dict[JobRequirements, None] = {}
        for w in core.workers.values():
            if w.reqs.io_type == msg.io_type:
                found[w.reqs] = None
        if core.catalog is not None:
            for reqs in core.catalog.retrieve_requirements(msg.io_type):
                found[reqs] = None
        core.reply(client, msg.rid, [r.to_wire() for r in found])

    def submit(self, client: bytes, msg: p.SubmitRequest, now: float) -> None:
        core = self._core
        ids = [j.id for j in msg.jobs]
        if len(set(ids)) != len(ids) or any(i in core.jobs for i in ids):
            dup = next(i for i in ids if i in core.jobs or ids.count(i) > 1)
            core.error(client, msg.rid, "duplicate-id", f"job id {dup} is already in use")
            return
        if core.draining:
            code = "broker-stopping-journaled" if core.journal is not None else "broker-stopping"
            core.error(
                client,
                msg.rid,
                code,
                "the broker is draining before it stops: "
                "it takes no new job; submit again once it is back",
            )
            return
        parent = None
        parent_id = msg.options.get("parent")
        if parent_id is not None:  # assistants of a running job
            parent = self._running(client, msg.rid, parent_id, "parent job", "takes no assistants")
            if parent is None:
                return
        if not msg.options.get("wait_for_worker"):
            unserved = core.serving.unserved(msg.jobs)
            if unserved is not None:
                core.out.clients.append((client, core.serving.no_worker(msg.rid, unserved)))
                return
        refusal = core.deps.refusal(msg.jobs)
        if refusal:
            core.error(client, msg.rid, "bad-after", refusal)
            return
        origin = msg.options.get("host")
        origin = origin if type(origin) is str else ""
        try:
            file_sets = [
                None if j.files is None else files.accept_files(j.files, origin, core.host)
                for j in msg.jobs
            ]
            for fs in file_sets:
                if fs is not None:
                    core.blobs.check(fs, core.sender)
        except FileError as e:
            core.error(client, msg.rid, "bad-files", str(e))
            return
        size = sum(len(v) for j in msg.jobs for v in j.values)
        size += sum(files.inline_size(fs) for fs in file_sets if fs is not None)
        cfg = core.config
        if core.matcher.queued + len(ids) > cfg.max_queued_jobs:
            core.error(
                client,
                msg.rid,
                "busy",
                f"the queue is full ({core.matcher.queued} jobs waiting, limit "
                f"{cfg.max_queued_jobs}); retry later or raise max_queued_jobs",
            )
            return
        if core.matcher.queued_bytes + size > cfg.max_queued_bytes:
            core.error(
                client,
                msg.rid,
                "busy",
                f"queued job contents would exceed {cfg.max_queued_bytes} bytes; retry later",
            )
            return
        wants = core.wants_event("job.queued")
        keys_cache = core.keys_cache
        opts = msg.options
        group: str | None = opts.get("group")
        members = core.groups.setdefault(group, []) if group is not None else None
        limits = (
            int(opts.get("max_retries", cfg.max_retries)),
            opts.get("time_limit"),
            opts.get("queue_time_limit"),
        )
        error_retries = opts.get("retries_on_error", 0)
        error_retries = error_retries if type(error_retries) is int and error_retries > 0 else 0
        rank = rank_of(opts.get("priority", 0), opts.get("protected", True))
        # work packages: the jobs queued at once go in packages (remus.server.packages)
        packer = Packer(core.matcher, opts["package_size"]) if "package_size" in opts else None
        journal = core.journal
        census = core.census
        # a batch shares its requirements objects: one census look-up for each
        reqs: JobRequirements | None = None
        counts: list[int] = []
        key = ""
        wall = core._wall() if journal is not None else 0.0
        owner = core.sender
        if journal is not None and (owner is not None or OWNER_OPTION in opts):
            # the owner is journaled with the job (never taken from what a client sent)
            opts = {**opts, OWNER_OPTION: owner.decode() if owner is not None else None}
        for sub, fs in zip(msg.jobs, file_sets, strict=True):
            values = list(sub.values)
            core.order += 1
            if sub.requirements is not reqs:
                reqs = sub.requirements
                counts = census.counts_for(reqs.io_type)
                key = job_key(reqs)
            job = JobRecord(
                sub.id,
                sub.requirements,
                key,
                keys_cache.setdefault(sub.keys, sub.keys),
                values,
                sum(len(v) for v in values) + (files.inline_size(fs) if fs is not None else 0),
                core.order,
                now,
            )
            job.files = fs
            if fs is not None:
                core.blobs.use(fs, job.id, now)
            job.limits = limits
            job.error_retries = error_retries
            job.rank = rank
            job.owner = owner
            if members is not None and group is not None:
                job.group = group
                members.append(job.id)
                core.group_left[group] = core.group_left.get(group, 0) + 1
            if parent is not None:
                job.parent = parent.id
                if parent.assistants is None:
                    parent.assistants = []
                parent.assistants.append(job.id)
            core.jobs[job.id] = job
            job.counts = counts
            counts[AT_QUEUED] += 1
            counts[SUBMITTED] += 1
            if journal is not None:
                saved = opts if fs is None else {**opts, FILES_OPTION: saved_files(fs)}
                if sub.after:
                    saved = {**saved, AFTER_OPTION: list(sub.after)}
                journal.submitted.append(
                    (job.id, job.reqs.to_wire(), job.keys, values, job.order, wall, saved)
                )
            if sub.after and not core.deps.place(job, sub.after, now):
                core.journal_status(job)  # WAITING (or FAILED already)
                continue
            if limits[2] is not None:
                core.limits.add(now + limits[2], QUEUE, job)
            if packer is not None:
                packer.add(job)
            else:
                core.matcher.enqueue(job)
            if wants:
                core._event("job.queued", job)
        if packer is not None:
            packer.flush()
        core.counters["submitted"] += len(ids)
        follow = msg.options.get("follow")
        if follow is not None:
            # submit-and-wait: the answer is the job's first progress reply, result included
            release = bool(msg.options.get("release"))
            core.holds.progress(
                client, p.ProgressRequest(msg.rid, ids[0], 0, follow, True, release), now
            )
        else:
            core.reply(client, msg.rid, len(ids))

    def status_row(self, job_id: str) -> list[Any]:
        core = self._core
        job = core.visible(job_id)
        if job is None:
            return [job_id, int(Status.INVALID), None, "", 0, "", 0, "", "", [], []]
        last = job.last_progress()
        value, message = (last[1], last[2]) if last else (None, "")
        if job.status is Status.QUEUED:
            reason = core.serving.queued_reason(job)
        elif job.status is Status.WAITING:
            reason = core.deps.why_waiting(job)
        else:
            reason = job.reason
        holder = None if job.worker is None or job.status.done else core.workers.get(job.worker)
        worker = holder.name if holder is not None else ""
        return [
            job_id,
            int(job.status),
            value,
            message,
            job.seq,
            reason,
            job.attempt,
            worker,
            job.parent or "",
            job.assistants or [],
            job.history or [],
        ]

    def status(self, client: bytes, msg: p.StatusRequest, now: float) -> None:
        core = self._core
        core.reply(client, msg.rid, [self.status_row(i) for i in msg.ids])

    def terminate(self, client: bytes, msg: p.TerminateRequest, now: float) -> None:
        core = self._core
        for job_id in msg.ids:
            job = core.visible(job_id)
            if job is not None and not job.status.done:
                core.end(job, Status.TERMINATED, now, "terminated by a client", "terminated")
        core.reply(client, msg.rid, [self.status_row(i) for i in msg.ids])

    def _running(
        self, client: bytes, rid: int, job_id: str, what: str, so: str
    ) -> JobRecord | None:
        """The job ``job_id`` if it is not over; else None, the client told why
        (``unknown-job``, or ``job-not-running``: "WHAT ID is over (STATUS): SO")."""
        core = self._core
        job = core.visible(job_id)
        if job is None and what == "parent job":
            job = core.run_by_sender(job_id)  # a worker's key submitting its job's assistants
        if job is None:
            core.error(client, rid, "unknown-job", f"{what} {job_id} is unknown")
        elif job.status.done:
            core.error(
                client, rid, "job-not-running", f"{what} {job_id} is over ({job.status.name}): {so}"
            )
        else:
            return job
        return None

    def control(self, client: bytes, msg: p.ControlRequest, now: float) -> None:
        """A control message for a job: to its worker now, or when it starts."""
        core = self._core
        job = self._running(client, msg.rid, msg.id, "job", "no handler reads its messages")
        if job is None:
            return
        if job.controls is None:
            job.controls = []
        if len(job.controls) >= MAX_CONTROLS:
            core.error(
                client,
                msg.rid,
                "busy",
                f"job {msg.id} already has {MAX_CONTROLS} control messages: it takes no more",
            )
            return
        job.controls.append(msg.data)
        seq = len(job.controls)
        if job.worker is not None and core.sent(job):
            core.out.workers.append((job.worker, p.Controls([(job.id, seq, msg.data)])))
        core.reply(client, msg.rid, seq)

    def result(self, client: bytes, msg: p.ResultRequest, now: float) -> None:
        core = self._core
        rows, frames = core.result_rows(list(msg.ids), core.sender)
        core.reply(client, msg.rid, rows, frames)
