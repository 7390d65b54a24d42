"""``remus submit``, ``remus status``, ``remus result``, ``remus cancel``, ``remus control``:
one job from the shell.

``remus submit IN OUT --data TEXT`` prints the job id. With ``--wait`` stdout is the result's
bytes only (the job id goes to stderr), so ``remus submit ... --wait > out.bin`` works; ``-o
PATH`` writes it to a file instead. A result with files is saved into ``-o DIR`` (default: the
current folder) and their paths printed, one a line. ``remus control JOB --data TEXT`` sends a
queued or running job a control message and prints its number.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from remus.cli import common as c
from remus.errors import JobNotFinishedError
from remus.types import IOType, Job, JobRequirements, JobResult, JobStatus, Status

if TYPE_CHECKING:
    from remus.client import BasicClient


def add_parsers(sub: Any, reach: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "submit",
        parents=[reach],
        help="submit a job; prints its id (with --wait: its result)",
        description="Submit a job for any worker that turns IN into OUT and print its id. "
        "With --wait, wait for it and print its result to stdout (or write it with -o); "
        "the job id then goes to stderr. Exit 1 if the job fails, is terminated or expires.",
    )
    s.add_argument("input", metavar="IN", help="the job's input type, e.g. Text")
    s.add_argument("output", metavar="OUT", help="the job's output type, e.g. Upper")
    data = s.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="TEXT", help="the job's data, as UTF-8 text")
    data.add_argument(
        "--data-file", metavar="PATH", help="read the job's data from a file ('-': stdin)"
    )
    s.add_argument(
        "--file",
        action="append",
        metavar="PATH",
        help="a file the worker gets as a local path (a file request); repeatable",
    )
    s.add_argument(
        "--arg",
        action="append",
        metavar="A",
        help="a command-line argument for the worker (a file request); repeatable; one that "
        "starts with '-' is written --arg=-x",
    )
    s.add_argument("--wait", action="store_true", help="wait for the result and print it")
    s.add_argument(
        "--progress",
        action="store_true",
        help="show a progress bar on stderr while waiting (implies --wait; on a terminal "
        "--wait shows it anyway)",
    )
    s.add_argument("-o", "--output-file", metavar="PATH", help="with --wait: write it to PATH")
    s.add_argument(
        "--time-limit",
        type=c.positive_float,
        metavar="S",
        help="seconds the job may run once a worker has it (then it fails)",
    )
    s.add_argument(
        "--wait-for-worker",
        action="store_true",
        help="queue the job even if no worker or worker file serves it yet",
    )
    s.add_argument(
        "--priority",
        type=c.priority,
        default=0,
        metavar="N",
        help="higher runs first, among the jobs a worker could take (within ±2**30) [0]",
    )
    s.add_argument(
        "--unprotected",
        action="store_true",
        help="a spare-capacity job: it runs only in slots no protected job wants, and is "
        "preempted (queued again, no attempt lost) when one needs its slot",
    )
    s.set_defaults(run=run_submit)

    st = sub.add_parser(
        "status",
        parents=[reach],
        help="a job's status, attempt, worker, progress, reason, parent, assistants, history",
        description="Where a job is. Exit 0 while it is queued, running or finished; 1 if it "
        "failed, was terminated or expired, or the broker does not know it.",
    )
    st.add_argument("job", metavar="JOB", help="the job id")
    st.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    st.set_defaults(run=run_status)

    r = sub.add_parser(
        "result",
        parents=[reach],
        help="a finished job's result",
        description="Print a finished job's result to stdout (or write it with -o). "
        "Exit 1 if the job failed, was terminated or expired, or is not finished (see --wait).",
    )
    r.add_argument("job", metavar="JOB", help="the job id")
    r.add_argument("-o", "--output-file", metavar="PATH", help="write it to PATH")
    r.add_argument("--wait", action="store_true", help="wait for the job if it is not finished")
    r.add_argument("--progress", action="store_true", help="with --wait: a progress bar")
    r.set_defaults(run=run_result)

    k = sub.add_parser(
        "cancel",
        parents=[reach],
        help="terminate a job",
        description="Terminate a job: a queued job never runs, a running one's worker is told "
        "to stop. A job that has already ended stays as it is.",
    )
    k.add_argument("job", metavar="JOB", help="the job id")
    k.set_defaults(run=run_cancel)

    ctl = sub.add_parser(
        "control",
        parents=[reach],
        help="send a job a control message; prints its number",
        description="Send a queued or running job a control message: its worker's handler "
        "reads it (job.control_messages()); a queued job gets it when it starts. Prints the "
        "message's number among the job's messages (1, 2, ...). Exit 1 if the job is over or "
        "the broker does not know it.",
    )
    ctl.add_argument("job", metavar="JOB", help="the job id")
    message = ctl.add_mutually_exclusive_group(required=True)
    message.add_argument("--data", metavar="TEXT", help="the message, as UTF-8 text")
    message.add_argument(
        "--data-file", metavar="PATH", help="read the message from a file ('-': stdin)"
    )
    ctl.set_defaults(run=run_control)


# ------------------------------------------------------------------------------ submit


def _data(args: argparse.Namespace) -> bytes | None:
    if args.data is not None:
        return str(args.data).encode()
    if args.data_file is None:
        return None
    if args.data_file == "-":
        return sys.stdin.buffer.read()
    try:
        with open(args.data_file, "rb") as f:
            return f.read()
    except OSError as e:
        raise c.CliError(f"--data-file {args.data_file}: {e.strerror}", c.USAGE) from None


def run_submit(args: argparse.Namespace) -> int:
    data = _data(args)
    if data is not None and (args.file or args.arg):
        raise c.CliError("a job takes --data (or --data-file), or --file/--arg, not both", c.USAGE)
    try:
        io = c.io_type(f"{args.input}:{args.output}")
    except argparse.ArgumentTypeError as e:
        raise c.CliError(str(e), c.USAGE) from None
    from remus.files import check_file

    for path in args.file or ():
        check_file(path)  # a FileError (exit 2) before the broker is asked anything
    wait = args.wait or args.progress or args.output_file is not None
    with c.basic_client(args) as bc:
        files = args.file if args.file or args.arg else None
        job = bc.submit(
            io,
            data,
            files=files,
            args=args.arg,
            time_limit=args.time_limit,
            wait_for_worker=args.wait_for_worker,
            priority=args.priority,
            protected=not args.unprotected,
        )
        if not wait:
            print(job.id, flush=True)
            return c.OK
        print(f"job {job.id} submitted", file=sys.stderr, flush=True)
        try:
            result = _wait(bc, job, args.progress)
        except KeyboardInterrupt:
            raise c.CliError(
                f"interrupted: job {job.id} keeps running (`remus cancel {job.id}` stops it)",
                c.INTERRUPTED,
            ) from None
    return _deliver(result, args.output_file)


def _wait(bc: BasicClient, job: Job, progress: bool) -> JobResult:
    if not (progress or sys.stderr.isatty()):
        return bc.wait(job)
    from remus.progress import ProgressBar

    with ProgressBar(f"job {job.id}") as bar:
        return bc.wait(job, on_progress=bar)


def _deliver(result: JobResult, path: str | None) -> int:
    """Write the result where asked: its bytes to ``path`` or stdout; its files saved."""
    from remus.files import JobFileResult

    if isinstance(result, JobFileResult) and result.files:
        for saved in result.save(path or "."):
            print(saved, flush=True)
        return c.OK
    if path is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(result.data)
        if sys.stdout.isatty() and result.data[-1:] != b"\n":
            sys.stdout.buffer.write(b"\n")  # the prompt on a line of its own
        sys.stdout.buffer.flush()
        return c.OK
    try:
        with open(path, "wb") as f:
            f.write(result.data)
    except OSError as e:
        raise c.CliError(f"cannot write the result to {path}: {e.strerror}") from None
    print(f"job {result.job_id}: {len(result.data):,} bytes written to {path}", file=sys.stderr)
    return c.OK


# ------------------------------------------------------------------------------ status, result


def status_json(s: JobStatus) -> dict[str, Any]:
    return {
        "job": s.job_id,
        "status": s.status.name,
        "attempt": s.attempt,
        "worker": s.worker,
        "progress": c.progress_json(s.progress),
        "reason": s.reason,
        "parent": s.parent,
        "assistants": list(s.assistants),
        "history": list(s.history),
    }


def _exit_for(status: Status) -> int:
    return c.JOB_FAILED if status is Status.INVALID or status > Status.FINISHED else c.OK


def run_status(args: argparse.Namespace) -> int:
    with c.client(args) as cl:
        s = cl.job_status(args.job, timeout=args.timeout)
    if args.json:
        c.print_json(status_json(s))
        return _exit_for(s.status)
    if s.status is Status.INVALID:
        why = "never submitted, or forgotten after --result-ttl"
        if cl.keys is not None:
            why = "never submitted, forgotten after --result-ttl, or another key's job"
        raise c.CliError(f"the broker at {args.client} does not know job {args.job} ({why})")
    out = c.console()
    attempt = f" (attempt {s.attempt})" if s.attempt > 1 else ""
    where = f" on {s.worker}" if s.worker else ""
    out.print(f"job {s.job_id}: {s.status.name}{attempt}{where}", markup=False)
    if s.progress is not None:
        out.print(f"progress: {c.progress_text(s.progress)}", markup=False)
    if s.reason:
        label = "waits because" if s.status is Status.QUEUED else "reason"
        out.print(f"{label}: {s.reason}", markup=False)
    if s.parent:
        out.print(f"assistant of: {s.parent}", markup=False)
    if s.assistants:
        out.print(f"assistants: {', '.join(s.assistants)}", markup=False)
    if s.history:
        out.print("history:", markup=False)
        for line in s.history:
            out.print(f"  {line}", markup=False)
    return _exit_for(s.status)


def run_result(args: argparse.Namespace) -> int:
    with c.basic_client(args) as bc:
        try:
            result = bc.client.retrieve_result(args.job, timeout=args.timeout)
        except JobNotFinishedError as e:
            if not (args.wait or args.progress):
                raise c.CliError(f"{e} (add --wait to wait for it)") from None
            # a wait needs only the job's id: its requirements are not sent
            job = Job(args.job, JobRequirements(IOType("any", "any")))
            result = _wait(bc, job, args.progress)
    return _deliver(result, args.output_file)


def run_cancel(args: argparse.Namespace) -> int:
    with c.client(args) as cl:
        before = cl.job_status(args.job, timeout=args.timeout)
        if before.status is Status.INVALID:
            mine = " (or it is another key's job)" if cl.keys else ""
            raise c.CliError(f"the broker at {args.client} does not know job {args.job}{mine}")
        if before.done:
            print(f"job {before.job_id} had already ended: {before.status.name}", flush=True)
            return c.OK
        s = cl.terminate(args.job, timeout=args.timeout)
    print(f"job {s.job_id}: {s.status.name}", flush=True)
    return c.OK


def run_control(args: argparse.Namespace) -> int:
    data = _data(args)
    if data is None:  # (argparse requires one of them)
        raise c.CliError("give the message with --data TEXT or --data-file PATH", c.USAGE)
    with c.client(args) as cl:
        seq = cl.send_control(args.job, data, timeout=args.timeout)
    print(seq, flush=True)
    return c.OK
