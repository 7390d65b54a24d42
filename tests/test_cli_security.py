"""The command line in secure mode: ``remus keys``, ``remus server --secret-key ...`` as a real
process, and the commands that reach it with ``--key``/``--server-key`` or the environment:
ownership of jobs, admin keys, refused keys, SIGHUP revocation, and ``remus watch``."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq.auth
from conftest import wait_for
from helpers_cli import ECHO, Handler, cli
from helpers_e2e import REMUS_SCRIPT, launch_cli_server, start_cli_server, wait_exit

from remus.server import ServerPorts
from remus.worker import Worker

pytestmark = pytest.mark.timeout(60)


def new_keys(name: str, folder: Path) -> Path:
    """``remus keys new NAME --dir FOLDER``; the secret key file."""
    ran = cli("keys", "new", name, "--dir", str(folder))
    assert ran.code == 0, ran.err
    return folder / f"{name}.key_secret"


@dataclass
class Secure:
    """A ``remus server`` in secure mode with an Echo worker, and the key files around it."""

    proc: subprocess.Popen[str]
    ports: ServerPorts
    folder: Path
    #: the broker's public key, as its ready line prints it (Z85)
    server_key: str
    alice: Path
    bob: Path
    root: Path  # an admin
    log: Path

    @property
    def ep(self) -> str:
        return self.ports.client

    def as_(self, who: Path, *argv: str) -> Any:
        """``remus ARGV`` with ``who``'s key and the broker's .key file."""
        broker = str(self.folder / "broker" / "broker.key")
        return cli(*argv, "--client", self.ep, "--key", str(who), "--server-key", broker)

    def submit(self, who: Path, data: str) -> str:
        ran = self.as_(who, "submit", "Text", "Echo", "--data", data)
        assert ran.code == 0, ran.err
        return str(ran.out.strip())

    def finished(self, who: Path, job: str) -> None:
        def done() -> bool:
            ran = self.as_(who, "status", job, "--json")
            return ran.code == 0 and json.loads(ran.out)["status"] == "FINISHED"

        wait_for(done, timeout=10)


@pytest.fixture
def secure(make_process: Any, tmp_path: Path) -> Iterator[Secure]:
    broker = new_keys("broker", tmp_path / "broker")
    alice = new_keys("alice", tmp_path / "clients")
    bob = new_keys("bob", tmp_path / "clients")
    root = new_keys("root", tmp_path / "admins")
    worker_key = new_keys("w1", tmp_path / "workers")
    log = tmp_path / "broker.log"
    with open(log, "w") as stderr:
        proc, ports = start_cli_server(
            make_process,
            "--secret-key",
            str(broker),
            "--allow-clients",
            str(tmp_path / "clients"),
            "--allow-workers",
            str(tmp_path / "workers"),
            "--admin-clients",
            str(tmp_path / "admins"),
            "--metrics",
            "0",
            stderr=stderr,
        )
    server_key = proc.ready["server_key"]  # type: ignore[attr-defined]
    assert server_key == cli("keys", "show", str(broker)).out.strip()
    handler = Handler()
    worker = Worker(
        ECHO, ports.worker, heartbeat_interval=0.2, server_key=server_key, secret_key=worker_key
    )
    handler.worker = worker
    runner = threading.Thread(target=worker.run, args=(handler,), name="test-secure-worker")
    runner.start()
    try:
        wait_for(lambda: worker.connected, timeout=10)
        yield Secure(proc, ports, tmp_path, server_key, alice, bob, root, log)
    finally:
        handler.release.set()
        worker._conn.shutdown.set()  # run() returns (as conftest's make_worker stops workers)
        worker._conn.inbox.put(None)
        runner.join(5)
        worker.close()


# ------------------------------------------------------------------ remus keys


def test_keys_new_writes_a_private_secret_file_and_show_prints_the_public_key(
    tmp_path: Path,
) -> None:
    ran = cli("keys", "new", "alice", "--dir", str(tmp_path / "keys"))
    assert ran.code == 0, ran.err
    public, secret = tmp_path / "keys" / "alice.key", tmp_path / "keys" / "alice.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    z85_public, z85_secret = zmq.auth.load_certificate(secret)
    assert z85_secret is not None
    assert str(public) in ran.out and str(secret) in ran.out
    assert z85_public.decode() in ran.out and z85_secret.decode() not in ran.out
    assert "allow-list" in ran.out and "private" in ran.out

    for path in (public, secret):
        shown = cli("keys", "show", str(path))
        assert shown.code == 0, shown.err
        assert shown.out == z85_public.decode() + "\n"  # the public key only, never the secret

    again = cli("keys", "new", "alice", "--dir", str(tmp_path / "keys"))
    assert again.code == 2 and "exists" in again.err and "--force" in again.err, again
    forced = cli("keys", "new", "alice", "--dir", str(tmp_path / "keys"), "--force")
    assert forced.code == 0, forced.err
    assert zmq.auth.load_certificate(public)[0] != z85_public

    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello\n")
    for bad in (not_a_key, tmp_path / "missing.key"):
        shown = cli("keys", "show", str(bad))
        assert shown.code == 2 and shown.out == "", shown
        assert shown.err.startswith("remus keys: ") and str(bad) in shown.err, shown.err
        assert "Traceback" not in shown.err


# ------------------------------------------------------------------ remus server


def test_server_with_a_secret_key_but_no_allow_lists_exits_2(
    make_process: Any, tmp_path: Path
) -> None:
    broker = new_keys("broker", tmp_path)
    proc, ports = launch_cli_server(
        make_process, "--secret-key", str(broker), stderr=subprocess.PIPE
    )
    assert ports is None
    assert wait_exit(proc, 10) == 2
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "--allow-clients and --allow-workers" in err and "Traceback" not in err, err

    ran = cli("--key", str(broker), "server")  # a client's option before `server`
    assert ran.code == 2 and "--secret-key" in ran.err, ran


# ------------------------------------------------------------------ jobs belong to their key


def test_the_owner_reaches_its_job_with_options_or_the_environment_and_others_do_not(
    secure: Secure, monkeypatch: Any
) -> None:
    job = secure.submit(secure.alice, "hello")
    secure.finished(secure.alice, job)
    result = secure.as_(secure.alice, "result", job)
    assert result.code == 0 and result.out == "echo:hello", result

    # the same key from the environment, the broker's key as Z85 text
    monkeypatch.setenv("REMUS_SECRET_KEY", str(secure.alice))
    monkeypatch.setenv("REMUS_SERVER_KEY", secure.server_key)
    ran = cli("status", job, "--client", secure.ep)
    assert ran.code == 0 and f"job {job}: FINISHED" in ran.out, ran
    ran = cli("submit", "Text", "Echo", "--data", "again", "--wait", "--client", secure.ep)
    assert ran.code == 0 and ran.out == "echo:again", ran

    # another client key: the job is unknown to it (options win over the environment)
    ran = cli("status", job, "--client", secure.ep, "--key", str(secure.bob))
    assert ran.code == 1 and f"does not know job {job}" in ran.err, ran
    assert "another key's job" in ran.err
    ran = cli("result", job, "--client", secure.ep, "--key", str(secure.bob))
    assert ran.code == 1 and "does not know job" in ran.err and ran.out == "", ran


def test_an_admin_lists_every_job_and_a_client_only_its_own(secure: Secure) -> None:
    mine = secure.submit(secure.alice, "a")
    theirs = secure.submit(secure.bob, "b")
    for who, job in ((secure.alice, mine), (secure.bob, theirs)):
        secure.finished(who, job)

    def listed(who: Path) -> set[str]:
        ran = secure.as_(who, "jobs", "--json")
        assert ran.code == 0, ran.err
        return {j["id"] for j in json.loads(ran.out)}

    assert listed(secure.root) == {mine, theirs}
    assert listed(secure.alice) == {mine}
    assert listed(secure.bob) == {theirs}

    # remus top, and the metrics exporter (a client of the broker with the broker's own key)
    top = secure.as_(secure.root, "top", "--once")
    assert top.code == 0 and "remus broker" in top.out and "Text->Echo" in top.out, top
    url = secure.proc.ready["metrics"]  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=10) as response:
        metrics = response.read().decode()
    assert "remus_up 1.0" in metrics.splitlines(), metrics[:500]


# ------------------------------------------------------------------ refused keys


def test_a_command_without_keys_or_with_an_unknown_key_says_why(
    secure: Secure, tmp_path: Path
) -> None:
    ran = cli("info", "--client", secure.ep, "--timeout", "0.5")
    assert ran.code == 3, ran
    assert "secure mode and needs keys" in ran.err and "--key" in ran.err, ran.err
    assert "Traceback" not in ran.err

    eve = new_keys("eve", tmp_path / "strangers")
    ran = secure.as_(eve, "info", "--timeout", "0.5")
    assert ran.code == 3 and "refused this command's key" in ran.err, ran
    info = secure.as_(secure.root, "info")
    assert info.code == 0 and "secure mode (CURVE)" in info.out, info
    doc = json.loads(secure.as_(secure.root, "info", "--json").out)
    assert doc["security"]["mode"] == "curve" and doc["security"]["refused_clients"] >= 1, doc

    ran = cli("info", "--client", secure.ep, "--key", str(secure.alice))  # no server key
    assert ran.code == 2 and "--server-key" in ran.err, ran


def test_sighup_rereads_the_allow_lists_and_a_deleted_key_is_refused(secure: Secure) -> None:
    assert secure.as_(secure.alice, "info").code == 0

    # nothing changed in the folders: only the signal makes the broker read them again
    secure.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "allow-lists reloaded" in secure.log.read_text(), timeout=10)

    (secure.folder / "clients" / "alice.key").unlink()
    secure.proc.send_signal(signal.SIGHUP)

    def refused() -> bool:
        ran = secure.as_(secure.alice, "info", "--timeout", "0.3")
        return ran.code == 3 and "refused this command's key" in ran.err

    wait_for(refused, timeout=10)
    assert secure.as_(secure.bob, "info").code == 0  # the others stay in


# ------------------------------------------------------------------ remus watch


def test_watch_with_a_client_key_sees_its_own_jobs_only(secure: Secure, make_process: Any) -> None:
    count = 3
    watch = make_process(
        [
            REMUS_SCRIPT,
            "watch",
            "job.finished",
            "--json",
            "--count",
            str(count),
            "--status",
            secure.ports.status,
            "--key",
            str(secure.alice),
            "--server-key",
            secure.server_key,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, name="test-watch-reader")
    reader.start()
    try:
        # alice's jobs until the watch shows one: its subscription is in place
        mine: list[str] = []

        def primed() -> bool:
            mine.append(secure.submit(secure.alice, f"prime {len(mine)}"))
            secure.finished(secure.alice, mine[-1])
            try:
                wait_for(lambda: lines, timeout=0.5)
            except AssertionError:
                return False
            return True

        wait_for(primed, timeout=10)
        seen = len(lines)
        assert seen < count, "every event was used up priming; raise count"
        theirs = secure.submit(secure.bob, "not for alice")
        secure.finished(secure.bob, theirs)
        for _ in range(count - seen):  # the events that end the watch, after bob's job's
            mine.append(secure.submit(secure.alice, "last"))
            secure.finished(secure.alice, mine[-1])
        assert wait_exit(watch, 10) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
        reader.join(5)
    assert len(lines) == count, lines
    assert [e["topic"] for e in lines] == ["job.finished"] * count  # no "@KEY " owner prefix
    assert {e["job"] for e in lines} <= set(mine)
    assert theirs not in {e["job"] for e in lines}
    # a watcher that left is forgotten, and the broker goes on serving
    ran = secure.as_(secure.alice, "submit", "Text", "Echo", "--data", "after", "--wait")
    assert ran.code == 0 and ran.out == "echo:after", ran


def test_watch_without_keys_on_a_secure_broker_says_it_needs_keys(
    secure: Secure, make_process: Any
) -> None:
    proc = make_process(
        [REMUS_SCRIPT, "watch", "--status", secure.ports.status, "--count", "1"],
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert "secure mode and needs keys" in err and "Traceback" not in err, err
