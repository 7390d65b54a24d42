"""Files (issue 4): JobFileRequest and JobFileResult, paths on one host, bytes between hosts.

Hosts are simulated with REMUS_HOST_ID: the client runs in this process (the variable set with
monkeypatch), the broker and the worker in processes of their own with ids of their own. One
test also puts the worker in its own network namespace, reaching the broker over a veth pair.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import start_server_process, wait_for

from remus import (
    FileError,
    FileHandle,
    IOType,
    JobFailedError,
    JobFileRequest,
    JobFileResult,
    JobSubmission,
    ServerError,
    Status,
)
from remus import files as rf
from remus import protocol as p
from remus.client.client import results_of
from remus.server import ServerConfig
from remus.server.core import BrokerCore
from remus.types import JobRequirements
from remus.worker import Job

FILE_WORKER = str(Path(__file__).resolve().parent / "workers" / "file_worker.py")
FILES = IOType("Files", "Copies")
REQS = JobRequirements(FILES)

# ---------------------------------------------------------------------------- helpers


def text_file(path: Path) -> Path:
    """Text with CRLF and LF endings and non-ASCII characters: text mode must not touch them."""
    path.write_bytes("héllo, wörld\r\nsecond line\n\tthird ☃\r\n".encode() * 2000)
    return path


def binary_file(path: Path, size: int = 300_000) -> Path:
    """Random bytes plus every byte value, larger than INLINE_MAX (it travels as a frame)."""
    path.write_bytes(os.urandom(size) + bytes(range(256)))
    return path


def report_of(updates: list[Any]) -> dict[str, Any]:
    """The JSON report tests/workers/file_worker.py sends as its one progress message."""
    (update,) = [u for u in updates if u.message.startswith("{")]
    return json.loads(update.message)


def spy_on_messages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, int]]:
    """(command, size of all frames) of every message anything in this process encodes."""
    seen: list[tuple[bytes, int]] = []
    encode = p.encode

    def spy(msg: p.Message) -> list[Any]:
        frames = encode(msg)
        seen.append((bytes(frames[1]), sum(len(f) for f in frames)))
        return frames

    monkeypatch.setattr(p, "encode", spy)
    return seen


class Core:
    """A BrokerCore on host ``broker-host`` driven directly (no sockets)."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("max_retries", 0)  # a lost worker's started job fails
        self.core = BrokerCore(ServerConfig(**config), host="broker-host")
        self.rid = 0

    def register(self, wid: bytes, host: str, credit: int = 1) -> None:
        """Register a worker; the broker's answer to it (a heartbeat) is flushed away."""
        self.core.worker_message(wid, p.Register(REQS, 1.0, host, 1, credit), 0.0)
        self.flush()

    def submit(
        self, *jobs: p.SubmittedJob, host: str = "broker-host", wait_for_worker: bool = False
    ) -> tuple[p.Message, Any]:
        """The reply to one submit, and everything else the pass sent."""
        self.rid += 1
        opts: dict[str, Any] = {"host": host}
        if wait_for_worker:
            opts["wait_for_worker"] = True
        self.core.client_message(b"c", p.SubmitRequest(self.rid, jobs, opts), 0.0)
        out = self.flush()
        return out.clients[-1][1], out

    def flush(self) -> Any:
        out = self.core.flush()
        for _, msg in out.workers:  # everything sent must survive the codec
            p.decode(p.encode(msg), p.BROKER_TO_WORKER)
        return out


def file_job(jid: str, *entries: p.FileEntry, args: tuple[str, ...] = ()) -> p.SubmittedJob:
    return p.SubmittedJob(jid, REQS, files=p.FileSet(list(entries), list(args)))


# ---------------------------------------------------------------------------- the vocabulary


def test_handles_and_requests_make_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    h = FileHandle("in.txt", "r")
    assert h.path == str(tmp_path / "in.txt") and os.fspath(h) == h.path
    req = JobFileRequest(FILES, ["a.bin", Path("sub/b.bin"), h], ["--fast"])
    assert [f.path for f in req.files] == [
        str(tmp_path / "a.bin"),
        str(tmp_path / "sub" / "b.bin"),
        h.path,
    ]
    assert req.requirements == REQS and req.args == ("--fast",)
    assert FileHandle("t", "r", "snow ☃").data == "snow ☃".encode()
    with pytest.raises(ValueError, match="mode"):
        FileHandle("x", "w")
    with pytest.raises(TypeError, match="list of strings"):
        JobFileRequest(FILES, [], "--fast")
    with pytest.raises(TypeError, match="not one file"):
        JobFileRequest(FILES, "in.txt")  # type: ignore[arg-type]


def test_file_sets_round_trip_through_every_message_that_carries_them() -> None:
    big = os.urandom(p.INLINE_MAX + 1)
    fs = p.FileSet(
        [
            p.FileEntry("/data/a.txt", "r"),
            p.FileEntry("/data/b.bin", "rb", b"small"),
            p.FileEntry("/data/c.bin", "rb", big),
        ],
        ["-o", "out dir"],
        "host-1",
    )
    messages: list[p.Message] = [
        p.SubmitRequest(1, [p.SubmittedJob("j", REQS, ("data",), [big], fs)], {"host": "h"}),
        p.Jobs([p.AssignedJob("j", REQS, files=fs), p.AssignedJob("k", REQS, ("data",), [b"x"])]),
        p.Report(results=[("j", b"r", fs), ("k", big)]),
    ]
    for msg in messages:
        frames = p.encode(msg)
        assert sum(1 for f in frames[3:] if len(f) > p.INLINE_MAX) == sum(1 for f in frames[3:]), (
            "only large bytes travel as frames"
        )
        back = p.decode([zmq.Frame(bytes(f)) for f in frames])
        got = back.jobs[0].files if not isinstance(back, p.Report) else back.results[0][2]
        assert got is not None
        assert [(e.path, e.mode) for e in got.files] == [(e.path, e.mode) for e in fs.files]
        assert [None if e.data is None else bytes(e.data) for e in got.files] == [
            None,
            b"small",
            big,
        ]
        assert list(got.args) == ["-o", "out dir"] and got.host == "host-1"


@pytest.mark.parametrize(
    "files, why",
    [
        ([], "must be a map"),
        ({"files": [["/a"]]}, "each file"),
        ({"files": [["/a", "w"]]}, "mode"),
        ({"files": [["", "rb"]]}, "bad file path"),
        ({"files": [["/a\0b", "rb"]]}, "bad file path"),
        ({"files": [["/a", "rb", None]]}, "fewer frames"),
        ({"files": [], "args": ["ok", 3]}, "list of strings"),
        ({"files": [], "host": 7}, "wrong type"),
    ],
)
def test_malformed_file_sets_are_protocol_errors(files: Any, why: str) -> None:
    body = p.unpack(p.encode(p.SubmitRequest(1, [p.SubmittedJob("j", REQS)]))[2])
    body["jobs"][0].append(files)
    with pytest.raises(p.ProtocolError, match=why):
        p.decode([p.VERSION, b"submit", p.pack(body)], p.CLIENT_COMMANDS)


# ---------------------------------------------------------------------------- reading and writing


def test_read_errors_name_the_path_and_never_block(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileError, match="no such file") as info:
        rf.read_file(missing)
    assert info.value.path == missing and missing in str(info.value)
    with pytest.raises(FileError, match="directory"):
        rf.check_file(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match="special file"):  # and does not wait for a writer
        rf.read_file(str(fifo))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x")
    secret.chmod(0)
    with pytest.raises(FileError, match="permission denied"):
        rf.check_file(str(secret))


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 5000)
    with pytest.raises(FileError, match="over the 4,000 bytes"):
        rf.read_file(str(f), limit=4000)
    with pytest.raises(FileError, match=r"plus 1,000 bytes of other files"):
        rf.read_file(str(f), limit=5500, already=1000)
    assert len(rf.read_file(str(f), limit=5000)) == 5000


def test_broker_reads_only_inside_its_roots_even_through_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "ok").write_bytes(b"ok")
    (root / "link").symlink_to(outside / "secret")
    roots = ServerConfig(file_roots=(str(root),)).file_roots
    assert bytes(rf.read_file(str(root / "ok"), roots=roots)) == b"ok"
    for path in (outside / "secret", root / "link", root / ".." / "outside" / "secret"):
        with pytest.raises(FileError, match="outside the folders"):
            rf.read_file(str(path), roots=roots)
    with pytest.raises(FileError, match="--file-root"):
        rf.read_file(str(root / "ok"), roots=())


def test_scratch_folder_is_private_and_removed(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    scratch = rf.Scratch("job/../1")
    assert not os.listdir(tmp_path), "made only when used"
    fs = p.FileSet(
        [
            p.FileEntry("/far/away/in.txt", "r", b"one"),
            p.FileEntry("/elsewhere/in.txt", "rb", zmq.Frame(b"two" * 10_000)),
            p.FileEntry("/x/..", "rb", b"three"),
        ],
        host="other",
    )
    local = rf.materialize(fs, "mine", scratch)
    (folder,) = os.listdir(tmp_path)
    assert (
        folder.startswith("remus-job____1-")
        and stat.S_IMODE(os.stat(scratch.path).st_mode) == 0o700
    )
    assert [os.path.basename(h.path) for h in local] == ["in.txt", "1-in.txt", "file-2"]
    other = rf.Scratch("names")
    names = rf.materialize(
        p.FileSet([p.FileEntry(f, "rb", b"") for f in ("/a/x", "/b/2-x", "/c/x")], host="o"),
        "mine",
        other,
    )
    assert [os.path.basename(h.path) for h in names] == ["x", "2-x", "2-2-x"]
    other.remove()
    assert all(os.path.dirname(h.path) == scratch.path for h in local)
    assert [h.mode for h in local] == ["r", "rb", "rb"]
    assert Path(local[1].path).read_bytes() == b"two" * 10_000
    with pytest.raises(FileError, match="on host other"):
        rf.materialize(p.FileSet([p.FileEntry("/far/x", "rb")], host="other"), "mine", scratch)
    scratch.remove()
    assert not os.listdir(tmp_path)
    with pytest.raises(RuntimeError, match="ended"):
        scratch.path  # noqa: B018


def test_result_save_writes_inline_files_and_keeps_local_paths(tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_text("here")
    result = JobFileResult(
        "j",
        b"",
        (
            FileHandle("/worker/out.txt", "r", b"text\r\n"),
            FileHandle(str(local), "r"),
            FileHandle("/worker/other/out.txt", "rb", memoryview(b"\x00\xff")),
        ),
    )
    saved = result.save(tmp_path / "saved")
    assert saved == [
        str(tmp_path / "saved" / "out.txt"),
        str(local),
        str(tmp_path / "saved" / "2-out.txt"),
    ]
    assert Path(saved[0]).read_bytes() == b"text\r\n"
    assert Path(saved[2]).read_bytes() == b"\x00\xff"


def test_a_path_result_from_another_host_is_an_error_not_a_dangling_path() -> None:
    fs = p.pack_files(p.FileSet([p.FileEntry("/on/worker/out.bin", "rb")], host="host-w"), [])
    reply = p.Reply(1, [["j", int(Status.FINISHED), "", "", b"", fs]])
    (got,) = results_of(reply, host="host-c")
    assert isinstance(got, FileError) and "host-w" in str(got) and "/on/worker/out.bin" in str(got)
    (ok,) = results_of(reply, host="host-w")
    assert isinstance(ok, JobFileResult) and ok.files[0].data is None


# ---------------------------------------------------------------------------- broker rules


def test_broker_answers_hello_with_its_host_and_limit() -> None:
    c = Core(max_message_bytes=12345)
    c.core.client_message(b"c", p.HelloRequest(1), 0.0)
    (_, reply), *_ = c.flush().clients
    assert reply.data == {"host": "broker-host", "max_message_bytes": 12345}


def test_broker_takes_paths_only_from_a_client_on_its_host() -> None:
    c = Core()  # no worker yet: the jobs wait for one, so only the file rules can refuse them
    job = file_job("j1", p.FileEntry("/data/in.txt", "r"))
    refused, _ = c.submit(job, host="client-host", wait_for_worker=True)
    assert isinstance(refused, p.Error) and refused.code == "bad-files"
    assert "/data/in.txt" in refused.message and "send the file's bytes" in refused.message
    assert "j1" not in c.core.jobs
    relative, _ = c.submit(file_job("j2", p.FileEntry("data/in.txt", "r")), wait_for_worker=True)
    assert isinstance(relative, p.Error) and "absolute" in relative.message
    inline = file_job("j3", p.FileEntry("/data/in.txt", "r", b"abc"))
    accepted, _ = c.submit(inline, host="elsewhere", wait_for_worker=True)
    assert isinstance(accepted, p.Reply)


def test_paths_go_as_paths_to_a_worker_on_the_submitters_host() -> None:
    c = Core()
    c.register(b"w", "broker-host")
    reply, out = c.submit(file_job("j", p.FileEntry("/data/in.txt", "r"), args=("-v",)))
    assert isinstance(reply, p.Reply)
    ((wid, msg),) = out.workers
    fs = msg.jobs[0].files
    assert wid == b"w" and fs is not None
    assert [(e.path, e.mode, e.data) for e in fs.files] == [("/data/in.txt", "r", None)]
    assert fs.host == "broker-host" and list(fs.args) == ["-v"]


def test_paths_for_a_worker_on_another_host_fail_without_file_roots(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("x")
    c = Core()
    c.register(b"w", "worker-host", credit=1)
    c.rid += 1
    c.core.client_message(
        b"c",
        p.SubmitRequest(
            c.rid,
            [
                file_job("paths", p.FileEntry(str(src), "r")),
                p.SubmittedJob("data", REQS, ("data",), [b"d"]),
            ],
            {"host": "broker-host"},
        ),
        0.0,
    )
    out = c.flush()
    job = c.core.jobs["paths"]
    assert job.status is Status.FAILED
    assert (
        str(src) in job.reason
        and "--file-root" in job.reason
        and "worker@worker-host" in job.reason
    )
    # its credit went back, and the next job went out in the same pass
    ((wid, msg),) = out.workers
    assert wid == b"w" and [j.id for j in msg.jobs] == ["data"]


def test_paths_for_a_worker_on_another_host_are_served_by_the_spool_thread(tmp_path: Path) -> None:
    """Even a small file is read by the spool thread, never by the core: the worker gets a
    reference to fetch, and the spool an order to serve the path in place."""
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x00" * 70_000)
    c = Core(file_roots=(str(tmp_path),))
    c.register(b"same", "broker-host", credit=1)
    c.register(b"far", "worker-host", credit=1)
    c.rid += 1
    c.core.client_message(
        b"c",
        p.SubmitRequest(
            c.rid,
            [file_job(jid, p.FileEntry(str(src), "rb"), args=("-v",)) for jid in ("j1", "j2")],
            {"host": "broker-host"},
        ),
        0.0,
    )
    out = c.flush()
    sent = {wid: msg.jobs[0] for wid, msg in out.workers}
    near, far = sent[b"same"].files, sent[b"far"].files
    assert near is not None and far is not None
    assert near.files[0].data is None and near.host == "broker-host" and list(near.args) == ["-v"]
    ref = far.files[0].ref
    assert far.files[0].data is None and far.host == "broker-host"
    assert ref is not None and ref.size == 70_000
    assert out.spool == [[b"path", ref.id.encode(), str(src).encode()]]
    # the bytes read for one worker are not kept by the broker
    assert all(e.data is None for j in c.core.jobs.values() for e in j.files.files)


def test_broker_keeps_result_files_stamped_with_the_worker_host_and_frees_inputs() -> None:
    c = Core()
    c.register(b"w", "worker-host")
    c.submit(file_job("j", p.FileEntry("/data/in.bin", "rb", b"input")))
    c.core.worker_message(b"w", p.Report(started=["j"]), 0.0)
    job = c.core.jobs["j"]
    # no retry left (the harness's max_retries=0): a started job's inputs are let go
    assert job.files is None and job.blobs is None, "a started job's inputs are let go"
    big = os.urandom(p.INLINE_MAX * 2)
    result = p.FileSet([p.FileEntry("/w/out.bin", "rb", big), p.FileEntry("/w/log.txt", "r")])
    c.core.worker_message(b"w", p.Report(results=[("j", b"", result)]), 0.0)
    c.core.client_message(b"c", p.ResultRequest(9, ["j"]), 0.0)
    c.core.client_message(b"c", p.ProgressRequest(10, "j", 0, 0.0, True), 0.0)
    replies = [m for _, m in c.flush().clients if isinstance(m, p.Reply) and m.rid in (9, 10)]
    rows, progress = replies
    got = results_of(rows, host="worker-host")[0]
    assert isinstance(got, JobFileResult)
    assert bytes(got.files[0].data or b"") == big and got.files[1].data is None
    blobs = iter(progress.frames)
    assert p.take(progress.data["result"], blobs, "j") == b""
    fs = p.take_files(progress.data["files"], blobs, "j")
    assert bytes(fs.files[0].data) == big
    assert fs.host == "worker-host" and [e.path for e in fs.files] == ["/w/out.bin", "/w/log.txt"]


# ---------------------------------------------------------------------------- one host


def test_same_host_passes_absolute_paths_and_no_bytes(
    make_server: Callable[..., Any],
    make_client: Callable[..., Any],
    make_worker: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMUS_HOST_ID", "one-host")
    src = binary_file(tmp_path / "in.bin", 1 << 20)
    seen_by_worker: list[Job] = []

    def handler(job: Job) -> list[str]:
        seen_by_worker.append(job)
        out = tmp_path / "out.bin"
        shutil.copyfile(job.files[0], out)
        return [str(out)]

    messages = spy_on_messages(monkeypatch)
    server = make_server()
    make_worker(FILES, server.ports.worker, run=handler)
    c = make_client(server.ports.client, basic=True)
    monkeypatch.chdir(tmp_path)
    result = c.run(FILES, files=["in.bin"], args=["--level", "3"], timeout=10)

    (job,) = seen_by_worker
    assert job.paths == [str(src)], "the worker reads the client's file in place"
    assert job.args == ("--level", "3") and job.origin == "one-host" and not job.scratch.made
    assert isinstance(result, JobFileResult)
    assert result.files == (FileHandle(str(tmp_path / "out.bin"), "rb"),)
    assert result.save(tmp_path / "elsewhere") == [str(tmp_path / "out.bin")]
    sizes = {cmd: max(n for c2, n in messages if c2 == cmd) for cmd, _ in messages}
    for cmd in (b"submit", b"jobs", b"report", b"reply"):
        assert sizes[cmd] < 2048, f"a {cmd.decode()} message carried {sizes[cmd]} bytes"


def test_missing_or_unusable_files_fail_submit_at_once(
    make_server: Callable[..., Any], make_client: Callable[..., Any], tmp_path: Path
) -> None:
    server = make_server()
    c = make_client(server.ports.client)
    missing = tmp_path / "missing.txt"
    for bad, why in ((missing, "no such file"), (tmp_path, "is a directory")):
        with pytest.raises(FileError, match=why) as info:
            c.submit_job(JobFileRequest(FILES, [bad]))
        assert str(bad) in str(info.value)
    ok = tmp_path / "ok.txt"
    ok.write_text("ok")
    with pytest.raises(FileError, match=r"missing\.txt"):
        c.submit_jobs([JobFileRequest(FILES, [ok]), JobFileRequest(FILES, [ok, missing])])
    assert server.stats["submitted"] == 0, "nothing reached the broker"


def test_a_result_naming_a_missing_file_fails_the_job(
    make_server: Callable[..., Any],
    make_client: Callable[..., Any],
    make_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = make_server()
    gone = tmp_path / "never-written.out"
    make_worker(FILES, server.ports.worker, run=lambda job: [gone])
    c = make_client(server.ports.client, basic=True)
    with pytest.raises(JobFailedError, match="no such file") as info:
        c.run(FILES, files=[text_file(tmp_path / "in.txt")], timeout=10)
    assert str(gone) in info.value.reason and "result file" in info.value.reason


def test_file_bytes_over_the_limits_fail_submit_with_a_clear_error(
    make_server: Callable[..., Any],
    make_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMUS_HOST_ID", "client-host")
    src = binary_file(tmp_path / "in.bin", 200_000)
    # the broker on another host: the client must send the bytes, and the broker's message
    # limit (told in its hello) is smaller than the file
    server = make_server(config=ServerConfig(host_id="far", max_message_bytes=128 * 1024))
    c = make_client(server.ports.client)
    with pytest.raises(FileError, match="max_message_bytes") as info:
        c.submit_job(JobFileRequest(FILES, [src]))
    assert str(src) in str(info.value)
    monkeypatch.setattr(rf, "MAX_FILE_BYTES", 1000)
    with pytest.raises(FileError, match="MAX_FILE_BYTES is 1,000"):
        c.submit_job(JobFileRequest(FILES, [FileHandle(src, "rb", b"y" * 1001)]))
    assert server.stats["submitted"] == 0


def test_data_jobs_are_unchanged_and_can_still_submit_beside_file_jobs(
    make_server: Callable[..., Any],
    make_client: Callable[..., Any],
    make_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = make_server()

    def handler(job: Job) -> bytes:
        return b"|".join([job.get("data") or b"", *(Path(f).read_bytes() for f in job.files)])

    make_worker(FILES, server.ports.worker, run=handler, prefetch=4)
    c = make_client(server.ports.client, basic=True)
    src = tmp_path / "in.txt"
    src.write_bytes(b"file")
    jobs = c.submit_many(
        [JobSubmission.of(FILES, b"data"), JobFileRequest(FILES, [src]), JobFileRequest(FILES)]
    )
    got = {r.job_id: r for r in c.as_completed(jobs, timeout=10)}
    assert [got[j.id].data for j in jobs] == [b"data", b"|file", b""]
    assert type(got[jobs[0].id]).__name__ == "JobResult"
    with pytest.raises(ServerError, match="not on the broker"):
        raw = c.client
        raw.call(
            p.SubmitRequest,
            [p.SubmittedJob("x-1", REQS, files=p.FileSet([p.FileEntry(str(src), "r")]))],
            {"host": "some-other-host"},
        )


# ---------------------------------------------------------------------------- across hosts


def test_across_hosts_the_bytes_travel_and_sha256_matches_end_to_end(
    make_process: Callable[..., subprocess.Popen[str]],
    make_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMUS_HOST_ID", "host-client")
    _, ports = start_server_process(make_process, env={"REMUS_HOST_ID": "host-broker"})
    worker_tmp, worker_cwd = tmp_path / "worker-tmp", tmp_path / "worker-cwd"
    worker_tmp.mkdir()
    worker_cwd.mkdir()
    make_process(
        [FILE_WORKER, ports.worker, "--chdir", str(worker_cwd)],
        env={"REMUS_HOST_ID": "host-worker", "TMPDIR": str(worker_tmp)},
    )
    text, binary = text_file(tmp_path / "in.txt"), binary_file(tmp_path / "in.bin")
    sent = {"in.txt": rf.sha256_file(text), "in.bin": rf.sha256_file(binary)}
    updates: list[Any] = []
    c = make_client(ports.client, basic=True, timeout=20)
    wait_for(lambda: c.client.can_mesh(FILES), timeout=20)  # the worker process registered
    result = c.run(
        FILES,
        files=[FileHandle(text, "r"), FileHandle(binary, "rb")],
        args=["--name", "two words"],
        timeout=30,
        on_progress=updates.append,
    )

    seen = report_of(updates)
    assert seen["host"] == "host-worker" and seen["origin"] == "host-client"
    assert seen["args"] == ["--name", "two words"]
    workdir = seen["workdir"]
    assert os.path.dirname(workdir) == str(worker_tmp)
    assert seen["tmp"] == [os.path.basename(workdir)], "nothing else in the worker's temp dir"
    for f in seen["files"]:
        assert os.path.dirname(f["path"]) == workdir, "inputs arrive as bytes, in the job folder"
        assert f["sha256"] == sent[os.path.basename(f["path"])]
    assert [f["mode"] for f in seen["files"]] == ["r", "rb"]

    assert isinstance(result, JobFileResult)
    assert [h.mode for h in result.files] == ["r", "rb"]
    assert all(h.data is not None for h in result.files), "results come back as bytes"
    assert [rf.sha256_bytes(h.data or b"") for h in result.files] == list(sent.values())
    saved = result.save(tmp_path / "saved")
    assert [os.path.basename(s) for s in saved] == ["out-in.txt", "out-in.bin"]
    assert [rf.sha256_file(s) for s in saved] == list(sent.values())
    wait_for(lambda: not os.listdir(worker_tmp), timeout=10)  # the job folder is gone
    assert not os.listdir(worker_cwd), "the worker wrote nothing where it runs"


def test_broker_sends_the_bytes_of_paths_for_a_worker_on_another_host(
    make_process: Callable[..., subprocess.Popen[str]],
    make_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    monkeypatch.setenv("REMUS_HOST_ID", "host-a")
    _, ports = start_server_process(
        make_process, "--file-root", str(shared), env={"REMUS_HOST_ID": "host-a"}
    )
    make_process([FILE_WORKER, ports.worker], env={"REMUS_HOST_ID": "host-b"})
    src = binary_file(shared / "in.bin")
    messages = spy_on_messages(monkeypatch)
    updates: list[Any] = []
    c = make_client(ports.client, basic=True, timeout=20)
    wait_for(lambda: c.client.can_mesh(FILES), timeout=20)  # the worker process registered
    result = c.run(FILES, files=[src], timeout=30, on_progress=updates.append)
    assert max(n for cmd, n in messages if cmd == b"submit") < 2048, "the client sent a path"
    (seen,) = report_of(updates)["files"]
    assert seen["path"] != str(src) and seen["sha256"] == rf.sha256_file(src)
    assert isinstance(result, JobFileResult) and result.files[0].data is not None
    assert rf.sha256_bytes(result.files[0].data) == rf.sha256_file(src)

    outside = binary_file(private / "in.bin", 10)
    with pytest.raises(JobFailedError, match="outside the folders") as info:
        c.run(FILES, files=[outside], timeout=30)
    assert str(outside) in info.value.reason


# ---------------------------------------------------------------------------- network namespace


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: its name, the address on this
    side, and the name of the veth end inside it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip` to make a network namespace")
    tag = secrets.token_hex(3)
    name, outer, inner = f"remus-test-{tag}", f"rv{tag}h", f"rv{tag}n"
    octet, quad = int(tag[:2], 16), int(tag[2:4], 16) & 0xFC
    host_ip, ns_ip = f"10.251.{octet}.{quad + 1}", f"10.251.{octet}.{quad + 2}"
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot make a network namespace here: {getattr(e, 'stderr', e)}")
    try:
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", name)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", outer)
        _run("ip", "link", "set", outer, "up")
        _run("ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", inner)
        _run("ip", "-n", name, "link", "set", inner, "up")
        yield name, host_ip, inner
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=10)


def test_worker_in_its_own_network_namespace_gets_the_bytes(
    netns: tuple[str, str, str],
    make_process: Callable[..., subprocess.Popen[str]],
    make_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, host_ip, inner = netns
    monkeypatch.setenv("REMUS_HOST_ID", "host-client")
    _, ports = start_server_process(
        make_process, "--worker", f"tcp://{host_ip}:0", env={"REMUS_HOST_ID": "host-broker"}
    )
    assert ports.worker.startswith(f"tcp://{host_ip}:")
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    make_process(
        [FILE_WORKER, ports.worker, "--netns", name],
        env={"REMUS_HOST_ID": "host-netns", "TMPDIR": str(worker_tmp)},
    )
    src = binary_file(tmp_path / "in.bin", 2_000_000)
    updates: list[Any] = []
    c = make_client(ports.client, basic=True, timeout=20)
    wait_for(lambda: c.client.can_mesh(FILES), timeout=20)  # the worker process registered
    result = c.run(FILES, files=[src], timeout=30, on_progress=updates.append)
    seen = report_of(updates)
    assert seen["host"] == "host-netns" and seen["files"][0]["sha256"] == rf.sha256_file(src)
    assert sorted(seen["ifaces"]) == sorted(["lo", inner]), "the worker ran in the namespace"
    assert isinstance(result, JobFileResult)
    (saved,) = result.save(tmp_path / "saved")
    assert rf.sha256_file(saved) == rf.sha256_file(src)
    wait_for(lambda: not os.listdir(worker_tmp), timeout=10)
