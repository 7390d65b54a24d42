"""The ``remus`` command line against a real ``remus server`` subprocess and a real worker:
every subcommand's table and ``--json``, ``submit --wait``, exit codes 0/1/2/3, ``python -m
remus``, the README's "Operating a broker" commands, and ``remus.progress``."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, wait_for
from helpers_cli import ECHO, Broker, cli, start_broker
from helpers_e2e import REMUS_SCRIPT, free_tcp_endpoint, wait_exit
from rich.console import Console

from remus import IOType, JobSubmission
from remus.progress import BatchBar, ProgressBar

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def broker(make_process: Any, make_worker: Any) -> Iterator[Broker]:
    yield from start_broker(make_process, make_worker)


def submit(b: Broker, data: str, *more: str) -> str:
    ran = cli("submit", "Text", "Echo", "--data", data, "--client", b.ep, *more)
    assert ran.code == 0, ran.err
    job_id = ran.out.strip()
    assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", job_id), ran.out
    return job_id


def status_of(b: Broker, job_id: str) -> dict[str, Any]:
    ran = cli("status", job_id, "--json", "--client", b.ep)
    doc: dict[str, Any] = json.loads(ran.out)
    return doc


def finished(b: Broker, job_id: str) -> None:
    wait_for(lambda: status_of(b, job_id)["status"] == "FINISHED", timeout=10)


# ------------------------------------------------------------------ version, python -m remus


def test_version_from_python_m_remus_and_the_script(make_process: Any) -> None:
    from remus import __version__

    for args in (["-m", "remus", "--version"], [REMUS_SCRIPT, "--version"]):
        proc = make_process(args, stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert out.strip() == f"remus {__version__}"


# ------------------------------------------------------------------ info, workers, jobs


def test_info_table_and_json(broker: Broker) -> None:
    finished(broker, submit(broker, "one"))
    ran = cli("info", "--client", broker.ep)
    assert ran.code == 0, ran.err
    assert f"remus broker 0.1.0 at {broker.ep}" in ran.out
    assert broker.ports.worker in ran.out and broker.ports.status in ran.out
    assert "Text->Echo" in ran.out  # the jobs-by-io-type table
    assert "1 idle" in ran.out

    doc = json.loads(cli("info", "--json", "--client", broker.ep).out)
    assert doc["endpoint"] == broker.ep
    assert doc["endpoints"]["worker"] == broker.ports.worker
    assert doc["totals"]["submitted"] == 1 and doc["totals"]["finished"] == 1
    assert doc["jobs_by_io_type"]["Text->Echo"]["FINISHED"] == 1
    assert doc["workers"]["idle"] == 1
    assert doc["uptime"] > 0 and doc["journal"] is False
    for key in ("version", "host", "jobs", "rates", "worker_files", "queued_bytes"):
        assert key in doc


def test_workers_table_and_json(broker: Broker) -> None:
    ran = cli("workers", "--client", broker.ep)
    assert ran.code == 0, ran.err
    doc = json.loads(cli("workers", "--json", "--client", broker.ep).out)
    assert len(doc) == 1
    w = doc[0]
    assert w["io_type"] == "Text->Echo" and w["state"] == "idle" and w["pid"] == os.getpid()
    assert w["name"] in ran.out  # the table names the worker
    assert "Text->Echo" in ran.out and "idle" in ran.out
    for key in ("id", "host", "jobs_held", "jobs_running", "credit", "last_heard", "jobs"):
        assert key in w
    assert w["slots"] == 1
    for head in ("SLOTS", "RSS", "CPU"):
        assert head in ran.out
    # the worker's memory and CPU, once it has sent them with a heartbeat
    wait_for(
        lambda: (
            "rss" in json.loads(cli("workers", "--json", "--client", broker.ep).out)[0]["resources"]
        )
    )
    assert "MiB" in cli("workers", "--client", broker.ep).out

    held = submit(broker, "hold")
    wait_for(lambda: status_of(broker, held)["status"] == "IN_PROGRESS")
    w = json.loads(cli("workers", "--json", "--client", broker.ep).out)[0]
    assert w["state"] == "busy" and w["jobs"] == [held]
    assert held in cli("workers", "--client", broker.ep).out


def test_jobs_table_json_and_filters(broker: Broker) -> None:
    done = submit(broker, "fine")
    failed = submit(broker, "boom")
    wait_for(lambda: status_of(broker, failed)["status"] == "FAILED")
    finished(broker, done)

    ran = cli("jobs", "--client", broker.ep)
    assert ran.code == 0, ran.err
    assert done in ran.out and failed in ran.out
    assert "FAILED" in ran.out and "the input says boom" in ran.out

    doc = json.loads(cli("jobs", "--json", "--client", broker.ep).out)
    assert [j["id"] for j in doc] == [failed, done]  # newest first
    assert doc[0]["status"] == "FAILED" and "boom" in doc[0]["reason"]
    assert doc[1]["io_type"] == "Text->Echo" and doc[1]["attempt"] == 1
    for key in ("worker", "queued_for", "running_for", "progress"):
        assert key in doc[1]

    only = json.loads(cli("jobs", "--status", "failed", "--json", "--client", broker.ep).out)
    assert [j["id"] for j in only] == [failed]
    assert json.loads(cli("jobs", "--io", "Text:Other", "--json", "--client", broker.ep).out) == []
    assert len(json.loads(cli("jobs", "--limit", "1", "--json", "--client", broker.ep).out)) == 1
    none = cli("jobs", "--status", "expired", "--client", broker.ep)
    assert none.code == 0 and "holds no EXPIRED jobs" in none.out


def test_why_a_job_waits(broker: Broker) -> None:
    """A job no worker serves, queued anyway: `remus jobs --status queued` and `remus status`
    say why it waits."""
    ran = cli("submit", "Text", "Nobody", "--data", "x", "--wait-for-worker", "--client", broker.ep)
    assert ran.code == 0, ran.err
    job_id = ran.out.strip()
    st = cli("status", job_id, "--client", broker.ep)
    assert st.code == 0
    assert f"job {job_id}: QUEUED" in st.out and "waits because:" in st.out
    table = cli("jobs", "--status", "queued", "--client", broker.ep)
    assert job_id in table.out and "QUEUED" in table.out


# ------------------------------------------------------------------ submit, status, result, cancel


def test_submit_wait_prints_the_result(broker: Broker) -> None:
    ran = cli("submit", "Text", "Echo", "--data", "hello", "--wait", "--client", broker.ep)
    assert ran.code == 0, ran.err
    assert ran.raw == b"echo:hello"  # stdout is the result only
    assert re.match(r"job \S+ submitted", ran.err)


def test_submit_wait_writes_the_result_with_o(broker: Broker, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x00\x01binary")
    out = tmp_path / "out.bin"
    ran = cli(
        "submit", "Text", "Echo", "--data-file", str(src), "--wait", "-o", str(out),
        "--client", broker.ep,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert out.read_bytes() == b"echo:\x00\x01binary"
    assert ran.out == "" and f"written to {out}" in ran.err


def test_submit_progress_draws_a_bar_on_stderr(broker: Broker) -> None:
    ran = cli("submit", "Text", "Echo", "--data", "steps", "--progress", "--client", broker.ep)
    assert ran.code == 0, ran.err
    assert ran.raw == b"echo:steps"
    assert "100%" in ran.err and "step 75" in ran.err  # the bar's last state, left at 100 %


def test_status_result_cancel_of_one_job(broker: Broker, tmp_path: Path) -> None:
    job_id = submit(broker, "hold")
    wait_for(lambda: status_of(broker, job_id)["progress"] is not None)
    st = status_of(broker, job_id)
    assert st["status"] == "IN_PROGRESS" and st["attempt"] == 1
    assert st["worker"].endswith(f":{os.getpid()}")  # name@host:pid of the test's worker
    assert st["progress"]["message"] == "holding" and st["progress"]["value"] == 10
    table = cli("status", job_id, "--client", broker.ep)
    assert table.code == 0
    assert f"job {job_id}: IN_PROGRESS on {st['worker']}" in table.out
    assert "progress: 10% holding" in table.out

    not_yet = cli("result", job_id, "--client", broker.ep)
    assert not_yet.code == 1 and "not finished" in not_yet.err and "--wait" in not_yet.err

    cancel = cli("cancel", job_id, "--client", broker.ep)
    assert cancel.code == 0, cancel.err
    assert f"job {job_id}: TERMINATED" in cancel.out
    gone = cli("status", job_id, "--client", broker.ep)
    assert gone.code == 1 and "TERMINATED" in gone.out
    res = cli("result", job_id, "--client", broker.ep)
    assert res.code == 1 and res.err.startswith(f"remus result: job {job_id} was terminated")
    again = cli("cancel", job_id, "--client", broker.ep)
    assert again.code == 0 and "already ended: TERMINATED" in again.out

    done = submit(broker, "kept")
    finished(broker, done)
    target = tmp_path / "r.txt"
    assert cli("result", done, "-o", str(target), "--client", broker.ep).code == 0
    assert target.read_bytes() == b"echo:kept"
    assert cli("result", done, "--client", broker.ep).raw == b"echo:kept"


def test_result_wait_in_a_real_process(broker: Broker, make_process: Any) -> None:
    job_id = submit(broker, "hold")
    proc = make_process(
        [REMUS_SCRIPT, "result", job_id, "--wait", "--client", broker.ep],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: status_of(broker, job_id)["status"] == "IN_PROGRESS")
    broker.handler.release.set()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out == "released"


# ------------------------------------------------------------------ exit codes


def test_exit_1_for_a_failed_job_and_for_no_worker(broker: Broker) -> None:
    ran = cli("submit", "Text", "Echo", "--data", "boom", "--wait", "--client", broker.ep)
    assert ran.code == 1 and ran.out == ""
    submitted, error = ran.err.splitlines()  # the job id, then one line that says why
    job_id = submitted.split()[1]
    assert error == f"remus submit: job {job_id} failed: ValueError: the input says boom"

    refused = cli("submit", "Text", "Nobody", "--data", "x", "--client", broker.ep)
    assert refused.code == 1 and refused.out == ""
    assert "Text->Nobody" in refused.err and "--wait-for-worker" in refused.err
    assert len(refused.err.strip().splitlines()) == 1

    for cmd in ("status", "result", "cancel"):
        unknown = cli(cmd, "feed-1", "--client", broker.ep)
        assert unknown.code == 1, cmd
        assert "does not know job feed-1" in unknown.err, (cmd, unknown.err)


USAGE_ERRORS = [
    ["jobs", "--io", "Foo"],
    ["jobs", "--status", "sleeping"],
    ["jobs", "--limit", "0"],
    ["submit", "Text"],
    ["submit", "Text", "Echo", "--data", "x", "--data-file", "y"],
    ["submit", "Text", "Echo", "--data", "x", "--file", "y"],
    ["submit", "Text", "Echo", "--data-file", "/no/such/file"],
    ["submit", "Text", "Echo", "--file", "/no/such/file"],
    ["status", "x", "--client", "localhost:5"],
    ["info", "--timeout", "0"],
    ["watch", "--status", "nowhere"],
    ["frobnicate"],
    [],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=" ".join)
def test_exit_2_for_usage_errors(argv: list[str]) -> None:
    ran = cli(*argv, *(["--client", free_tcp_endpoint()] if argv[:1] == ["submit"] else []))
    assert ran.code == 2, ran
    assert ran.err.strip() and "Traceback" not in ran.err


REACHING = [
    ["info"],
    ["workers"],
    ["jobs"],
    ["submit", "Text", "Echo", "--data", "x"],
    ["submit", "Text", "Echo", "--data", "x", "--wait"],
    ["status", "a-1"],
    ["result", "a-1"],
    ["cancel", "a-1"],
]


@pytest.mark.parametrize("argv", REACHING, ids=" ".join)
def test_exit_3_when_no_broker_answers(argv: list[str], monkeypatch: Any) -> None:
    nowhere = free_tcp_endpoint()
    monkeypatch.setenv("REMUS_CLIENT", nowhere)  # the environment names the broker
    started = time.monotonic()
    ran = cli("--timeout", "0.5", *argv)
    assert time.monotonic() - started < 0.5 + 1
    assert ran.code == 3, ran
    assert ran.err == (
        f"remus {argv[0]}: no broker answers at {nowhere} (waited 0.5 s): is `remus server` "
        "running there? (--client / REMUS_CLIENT, --timeout)\n"
    )


def test_exit_3_from_the_script_within_its_timeout(make_process: Any) -> None:
    def run(*args: str) -> tuple[subprocess.Popen[str], float]:
        started = time.monotonic()
        proc = make_process([REMUS_SCRIPT, *args], stderr=subprocess.PIPE)
        wait_exit(proc, 20)
        return proc, time.monotonic() - started

    _, startup = run("--version")  # what any run of the script costs before it does anything
    proc, took = run("status", "a-1", "--timeout", "1", "--client", free_tcp_endpoint())
    assert proc.returncode == 3
    assert took < startup + 1 + 1, f"exit 3 after {took:.2f} s (startup {startup:.2f} s)"
    assert proc.stderr is not None and "no broker answers" in proc.stderr.read()


def test_exit_2_and_0_from_the_script(make_process: Any, broker: Broker) -> None:
    bad = make_process([REMUS_SCRIPT, "jobs", "--io", "Foo"], stderr=subprocess.PIPE)
    assert wait_exit(bad, 20) == 2
    assert bad.stderr is not None and "INPUT:OUTPUT" in bad.stderr.read()
    ok = make_process(
        [REMUS_SCRIPT, "submit", "Text", "Echo", "--data", "hi", "--wait"],
        env={"REMUS_CLIENT": broker.ep},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = ok.communicate(timeout=20)
    assert ok.returncode == 0, err
    assert out == "echo:hi"


def test_remus_server_keeps_its_own_client_option() -> None:
    ran = cli("--client", "tcp://127.0.0.1:0", "server")
    assert ran.code == 2 and "put --client after `server`" in ran.err


# ------------------------------------------------------------------ the README's commands


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Operating a broker", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_operating_commands_run_as_written(broker: Broker, make_process: Any, make_worker):
    """Every command of README "Operating a broker", run as written against a real broker
    named by REMUS_CLIENT / REMUS_STATUS (JOB replaced by a real job id)."""
    make_worker(IOType("Text", "Upper"), broker.ports.worker, run=lambda job: job["data"].upper())
    job_id = submit(broker, "fine")
    env = {"REMUS_CLIENT": broker.ep, "REMUS_STATUS": broker.ports.status}
    commands = readme_commands()
    assert len(commands) >= 5 and all(cmd.startswith("remus ") for cmd in commands)
    for cmd in commands:
        argv = [REMUS_SCRIPT, *cmd.replace("JOB", job_id).split()[1:]]
        proc = make_process(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if argv[1] == "watch":  # runs until Ctrl-C: it says what it watches, then stops on one
            assert proc.stderr is not None
            assert proc.stderr.readline().startswith("remus watch: watching ")
            proc.send_signal(signal.SIGINT)
        if argv[1] == "top":  # redraws until Ctrl-C (on a pipe, frame after frame): stop it
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("remus broker ")
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, (cmd, out, err)
        assert "Traceback" not in err, (cmd, err)
        if argv[1] == "submit":
            assert out == "HELLO", cmd


# ------------------------------------------------------------------ remus.progress


def test_progress_bar_follows_one_job(broker: Broker, make_client: Any) -> None:
    c = make_client(broker.ep, basic=True)
    drawn = io.StringIO()
    with ProgressBar("meshing", console=Console(file=drawn, width=120)) as bar:
        result = c.run(ECHO, b"steps", on_progress=bar)
    assert result.data == b"echo:steps"
    assert bar.last is not None and (bar.last.value, bar.last.message) == (75, "step 75")
    assert re.search(r"meshing .* 100% .*step 75", drawn.getvalue()), drawn.getvalue()


def test_batch_bar_counts_finished_and_failed(broker: Broker, make_client: Any) -> None:
    c = make_client(broker.ep, basic=True)
    jobs = c.submit_many(JobSubmission.of(ECHO, d) for d in (b"a", b"boom", b"c"))
    drawn = io.StringIO()
    got: list[Any] = []
    with BatchBar(len(jobs), "batch", console=Console(file=drawn, width=120)) as bar:
        for result in bar.track(c.as_completed(jobs, timeout=20, errors="yield")):
            got.append(result)
    assert len(got) == 3 and bar.failed == 1
    assert re.search(r"batch .* 3/3 .* 1 failed", drawn.getvalue()), drawn.getvalue()
    assert [type(r).__name__ for r in got].count("JobFailedError") == 1  # yielded, not raised


def test_submit_files_and_args_saves_the_result_files(
    broker: Broker, make_process: Any, tmp_path: Path
) -> None:
    from helpers_e2e import WORKERS

    make_process([str(WORKERS / "file_worker.py"), broker.ports.worker])
    src = tmp_path / "part.txt"
    src.write_text("some text\n")
    wait_for(lambda: cli("submit", "Files", "Copies", "--file", str(src), "--client", broker.ep,
                         "--timeout", "1").code == 0)  # fmt: skip
    ran = cli(
        "submit", "Files", "Copies", "--file", str(src), "--arg=--fine", "--wait",
        "-o", str(tmp_path / "out"), "--client", broker.ep,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    (saved,) = ran.out.splitlines()  # each result file's local path, one a line
    assert Path(saved).read_text() == "some text\n"
    job_id = ran.err.split()[1]  # "job ID submitted"
    report = json.loads(status_of(broker, job_id)["progress"]["message"])
    assert report["args"] == ["--fine"]  # the worker got the argument
