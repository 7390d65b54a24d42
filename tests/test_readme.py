"""Every code snippet of README.md runs as written, against a real ``remus server``.

Each ```python block is a whole script. Its first line names it (``# upper_worker.py``); a block
without a name is known by its section's heading. Scripts that import ``remus.worker`` are
workers: each is started the way the README's ``.venv/bin/python upper_worker.py ENDPOINT``
line shows, with the test broker's worker endpoint. Every other script runs in a fresh
folder (holding the files it names) with ``REMUS_CLIENT`` naming the test broker, and its
output is checked against what the README says it prints. The endpoints the README names
(tcp://127.0.0.1:50505 etc.) are never used: a test broker is on free ports, and a snippet that
starts its own broker on the default ports (``ServerPorts()``) gets free ones instead.

```sh lines: the ``remus server`` commands start a broker (on free ports) and stop it; the
"Operating a broker" commands are run by tests/test_cli.py; ``make demo`` by tests/test_demo.py.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, wait_for
from helpers_e2e import start_cli_server, wait_exit

from remus import IOType
from remus.client import BasicClient
from remus.server import ServerPorts

pytestmark = pytest.mark.timeout(60)

DEFAULT = ServerPorts()  # the endpoints the README names
#: how the README starts a worker script: `.venv/bin/python NAME.py WORKER_ENDPOINT`
WORKER_COMMAND = re.compile(r"\.venv/bin/python (\w+\.py) (\S+)$")
#: the "Operating a broker" commands, run by tests/test_cli.py
CLI_SECTION = "Operating a broker"
#: the secure mode walk-through, run in order by test_shared_network_walkthrough
SECURE_SECTION = "Running on a shared network"
#: the HTTP gateway's commands: run by test_http_section_runs_as_written
HTTP_SECTION = "HTTP"


@dataclass
class Snippet:
    lang: str
    section: str
    code: str

    @property
    def name(self) -> str:
        first = self.code.split("\n", 1)[0]
        named = re.fullmatch(r"# (\S+\.py)", first)
        return named.group(1) if named else self.section

    @property
    def is_worker(self) -> bool:
        """A worker program (started the way the README shows), not a whole example that
        runs its own broker and workers."""
        return "from remus.worker import" in self.code and not self.starts_a_broker

    @property
    def starts_a_broker(self) -> bool:
        return "Server(" in self.code


def readme_snippets() -> list[Snippet]:
    found: list[Snippet] = []
    section = ""
    block: list[str] | None = None
    lang = ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if block is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.startswith("```"):
                lang, block = line[3:].strip(), []
        elif line.startswith("```"):
            found.append(Snippet(lang, section, "\n".join(block) + "\n"))
            block = None
        else:
            block.append(line)
    return found


SNIPPETS = readme_snippets()
PYTHON = [s for s in SNIPPETS if s.lang == "python"]
WORKERS = [s for s in PYTHON if s.is_worker]
SCRIPTS = [s for s in PYTHON if not s.is_worker]


def sh_lines(snippet: Snippet) -> list[str]:
    """The block's commands, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in snippet.code.splitlines())
    return [line for line in lines if line]


# ------------------------------------------------------------------ what each script prints


@dataclass
class Ran:
    out: str
    err: str
    cwd: Path
    snippet: Snippet


def upper_client(ran: Ran) -> None:
    *progress, last = ran.out.splitlines()
    assert last == "b'HELLO'"
    assert progress == ["JobProgress(value=50, message='halfway', seq=1)"]  # on_progress=print


def upper_many(ran: Ran) -> None:
    lines = literal(ran.snippet, "lines")
    printed = [line.split(" ", 1) for line in ran.out.splitlines()]
    assert sorted(data for _, data in printed) == sorted(repr(x.upper()) for x in lines)
    assert len({job_id for job_id, _ in printed}) == len(lines), "a job id per line"
    assert f"{len(lines)}/{len(lines)}" in ran.err, "the batch bar, on stderr"


def broker(ran: Ran) -> None:
    endpoints = ran.out.split()
    assert len(endpoints) == 3, ran.out
    for ep in endpoints:
        found = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", ep)
        assert found, ran.out
        assert int(found.group(1)) not in (0, 50505, 50510, 50550), "free ports, as it says"


def mesh_client(ran: Ran) -> None:
    (saved,) = ast.literal_eval(ran.out.strip())  # the list of the result's files
    assert (ran.cwd / saved).parent.resolve() == (ran.cwd / "meshes").resolve()
    stl = (ran.cwd / "part.stl").read_text()
    assert (ran.cwd / saved).read_text() == f"mesh of {stl!r} with --fine\n"


def monitors(ran: Ran) -> None:
    lines = ran.out.splitlines()
    assert lines[-1] == "b'HELLO' / failed: ValueError: nothing to shout"
    assert any(
        ln.startswith("ALERT job.failed ") and ln.endswith("nothing to shout") for ln in lines
    )
    assert any(ln.startswith("job.finished: waited ") for ln in lines)
    assert any(ln.startswith("job.failed: waited ") for ln in lines)


def scheduling(ran: Ran) -> None:
    urgent, heard, master, spares, preempted = ran.out.splitlines()
    assert (urgent, heard, master) == ("b'URGENT'", "b'heard stop early'", "b'PART 1 + PART 2'")
    done = ast.literal_eval(spares)
    assert done[0] == "spare done, resumed at 0", "one spare job was never preempted"
    assert re.fullmatch(r"spare done, resumed at [1-3]", done[1]), "the other resumed"
    times = ast.literal_eval(preempted.removeprefix("times preempted: "))
    assert times[0] == 0 and times[1] >= 1


def secure(ran: Ran) -> None:
    assert ran.out.splitlines() == ["b'FOR ALICE ONLY'", "bob: no such job"]
    secret = ran.cwd / "keys" / "clients" / "alice.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600, "a secret key is its owner's only"


def mapreduce(ran: Ran) -> None:
    assert ran.out.splitlines() == ["b'385'"]


def upper_async(ran: Ran) -> None:
    lines = ran.out.splitlines()
    assert lines[:3] == ["[b'ONE', b'TWO', b'THREE']", "50 halfway", "b'HELLO'"]
    assert sorted(line.split(" ", 1)[1] for line in lines[3:5]) == ["b'FIVE'", "b'FOUR'"]
    assert lines[5:] == ["gave up: TERMINATED"]


#: what a script run must show, by snippet name
CHECKS: dict[str, Callable[[Ran], None]] = {
    "upper_client.py": upper_client,
    "upper_many.py": upper_many,
    "broker.py": broker,
    "mesh_client.py": mesh_client,
    "monitors.py": monitors,
    "scheduling.py": scheduling,
    "secure.py": secure,
    "upper_async.py": upper_async,
    "mapreduce.py": mapreduce,
}

#: the files a script names, made in its folder first
FILES = {
    "mesh_client.py": {"part.stl": "solid part\nendsolid part\n", "notes.txt": "fine, please\n"},
}

#: a stand-in for the `mesher` program that the files example's worker runs
MESHER = f"""#!{sys.executable}
import sys
args = sys.argv[1:]
at = args.index("-o")
out, rest = args[at + 1], args[:at] + args[at + 2 :]
with open(rest[-1]) as f, open(out, "w") as g:
    g.write(f"mesh of {{f.read()!r}} with {{' '.join(rest[:-1])}}\\n")
"""


def literal(snippet: Snippet, name: str) -> Any:
    """The value of ``name = <literal>`` in the snippet."""
    for node in ast.parse(snippet.code).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{snippet.name} has no `{name} = ...`")


# ------------------------------------------------------------------ the tests


def test_every_snippet_is_known() -> None:
    names = [s.name for s in PYTHON]
    assert len(set(names)) == len(names), f"two python snippets share a name: {names}"
    assert {"upper_worker.py", "mesh_worker.py"} <= {s.name for s in WORKERS}
    unchecked = {s.name for s in SCRIPTS} - set(CHECKS)
    assert not unchecked, f"README snippets this test does not check yet: {unchecked}"
    for snippet in SNIPPETS:
        if snippet.lang == "sh":
            for line in sh_lines(snippet):
                known = (
                    line.startswith("make ")
                    or snippet.section in (CLI_SECTION, SECURE_SECTION, HTTP_SECTION)
                    or line.startswith(".venv/bin/remus server")
                    or WORKER_COMMAND.fullmatch(line)
                )
                assert known, f"README command this test does not run: {line!r}"
        else:
            assert snippet.lang == "python", f"a README block in {snippet.lang!r}"


def test_the_worker_command_line_is_shown() -> None:
    commands = [
        m for s in SNIPPETS if s.lang == "sh" for m in map(WORKER_COMMAND.fullmatch, sh_lines(s))
    ]
    started = {m.group(1): m.group(2) for m in commands if m}
    assert started == {"upper_worker.py": DEFAULT.worker}


@pytest.mark.parametrize("snippet", SCRIPTS, ids=lambda s: s.name)
def test_script_runs_as_written(
    snippet: Snippet, make_process: Any, make_client: Any, tmp_path: Path
) -> None:
    check = CHECKS.get(snippet.name)
    assert check is not None, f"no check for the README snippet {snippet.name!r}: add one"
    env = dict(os.environ)
    if not snippet.starts_a_broker:
        _, ports = start_cli_server(make_process)
        start_workers(ports, make_process, make_client, tmp_path)
        env["REMUS_CLIENT"] = ports.client
    code = snippet.code.replace("ServerPorts()", "ServerPorts.ephemeral()")
    cwd = tmp_path / "run"
    cwd.mkdir()
    for name, text in FILES.get(snippet.name, {}).items():
        (cwd / name).write_text(text)
    (cwd / "script.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    check(Ran(done.stdout, done.stderr, cwd, snippet))


def start_workers(ports: ServerPorts, make_process: Any, make_client: Any, folder: Path) -> None:
    """Every worker snippet, started as the README shows (python NAME.py ENDPOINT) with
    `mesher` on its PATH; returns once the broker serves what they serve."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "mesher").write_text(MESHER)
    (bin_dir / "mesher").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for worker in WORKERS:
        script = folder / worker.name
        script.write_text(worker.code)
        make_process([str(script), ports.worker], env=env)
    client = make_client(ports.client)
    serves = {IOType("Text", "Upper"), IOType("STL", "Mesh3D")}
    wait_for(lambda: serves <= client.supported_io_types(timeout=5), timeout=20)


@pytest.mark.parametrize(
    "command",
    [line for s in SNIPPETS if s.lang == "sh" and s.section != SECURE_SECTION
     for line in sh_lines(s) if line.startswith(".venv/bin/remus server")],
)  # fmt: skip
def test_server_command_starts_a_broker(command: str, make_process: Any) -> None:
    """As written, on free ports instead of the default ones; it stops on SIGTERM."""
    extra = command.split()[2:]
    proc, ports = start_cli_server(make_process, *extra)
    assert all(ep.startswith("tcp://127.0.0.1:") for ep in (ports.client, ports.worker))
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 20) == 0


def test_http_section_runs_as_written(make_process: Any, make_client: Any, tmp_path: Path) -> None:
    """The "HTTP" commands: `remus http` on a free port in front of a test broker with the
    README's workers, then its curl line against it (curl is Debian's; where a machine lacks
    it, the same request is made with urllib)."""
    _, ports = start_cli_server(make_process)
    start_workers(ports, make_process, make_client, tmp_path)
    lines = [ln for s in SNIPPETS if s.section == HTTP_SECTION and s.lang == "sh"
             for ln in sh_lines(s)]  # fmt: skip
    gateway = lines[0].split("#")[0].split()
    assert gateway[:3] == [".venv/bin/remus", "http", "--listen"]
    proc = make_process(
        [str(ROOT / gateway[0]), *gateway[1:-1], "127.0.0.1:0"],
        env={"REMUS_CLIENT": ports.client},
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert "url=" in ready, f"remus http did not start (exit code {proc.poll()}): {ready!r}"
    url = ready.split("url=")[1].split()[0]
    curl = lines[1].replace("http://127.0.0.1:8080", url)
    assert curl.startswith("curl --data-binary 'hello' ")
    if shutil.which("curl"):
        done = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        out = done.stdout
    else:
        with urllib.request.urlopen(curl.split()[-1], data=b"hello", timeout=30) as answer:
            out = answer.read().decode()
    assert out == "HELLO"
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 15) == 0


def test_shared_network_walkthrough(make_process: Any, tmp_path: Path) -> None:
    """The "Running on a shared network" commands, in order, in a fresh folder: keys made,
    the broker started with them, the README's worker given a worker key through the
    environment, and the client's submit answered; the same submit without keys is refused
    with words, not a traceback."""
    lines = [line for s in SNIPPETS if s.section == SECURE_SECTION and s.lang == "sh"
             for line in sh_lines(s)]  # fmt: skip
    env = {**os.environ}
    for var in ("REMUS_SERVER_KEY", "REMUS_SECRET_KEY", "REMUS_SECRET_KEY_Z85", "REMUS_CLIENT"):
        env.pop(var, None)

    def remus(args: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "remus", *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=30,
        )

    exported: dict[str, str] = {}
    ports = None
    ran = []
    for line in lines:
        words = line.split()
        if words[0] == "remus" and words[1] == "keys":
            done = remus(words[1:], {})
            assert done.returncode == 0, done.stderr
            if words[2] == "show":
                key = (tmp_path / words[3]).read_text().split('public-key = "')[1][:40]
                assert done.stdout.strip() == key
        elif line.startswith(".venv/bin/remus server"):
            args = [w.replace("keys/", f"{tmp_path}/keys/") for w in words[2:]]
            _, ports = start_cli_server(make_process, *args)
            worker = next(w for w in WORKERS if w.name == "upper_worker.py")
            (tmp_path / worker.name).write_text(worker.code)
            keys = tmp_path / "keys"
            make_process(
                [str(tmp_path / worker.name), ports.worker],
                env={
                    "REMUS_SERVER_KEY": str(keys / "broker" / "broker.key"),
                    "REMUS_SECRET_KEY": str(keys / "workers" / "meshers.key_secret"),
                },
            )
            with BasicClient(
                ports.client,
                server_key=keys / "broker" / "broker.key",
                secret_key=keys / "admins" / "ops.key_secret",
            ) as ops:  # the worker has registered before the README's client submits
                wait_for(lambda: ops.client.can_mesh(IOType("Text", "Upper")), timeout=20)
        elif words[0] == "export":
            exported.update(w.split("=", 1) for w in words[1:])  # type: ignore[misc]
        elif words[0] == "remus":
            assert ports is not None, "the broker starts before clients use it"
            extra = {**exported, "REMUS_CLIENT": ports.client}
            done = remus([*words[1:], "--timeout", "20"], extra)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "HELLO", done.stdout
            refused = remus([*words[1:], "--timeout", "2"], {"REMUS_CLIENT": ports.client})
            assert refused.returncode != 0 and "Traceback" not in refused.stderr
            assert "secure mode" in refused.stderr or "refused" in refused.stderr, refused.stderr
        else:
            raise AssertionError(f"a walk-through line this test does not know: {line!r}")
        ran.append(words[0])
    assert ran.count("export") == 1 and ports is not None
