"""Worker files (.rw): every key, and a message that says what to fix for every mistake."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from factory_helpers import PROBE, write_executable, write_worker_file

from remus.errors import WorkerFileError
from remus.server.workerfile import (
    check_worker_dirs,
    format_check_report,
    is_worker_file,
    load_worker_file,
    scan,
)
from remus.types import IOType, JobRequirements, matches


def test_minimal_file_and_defaults(tmp_path: Path) -> None:
    exe = write_executable(tmp_path / "edge_mesher.sh")
    rw = write_worker_file(tmp_path, ExecutableName=str(exe))
    wf = load_worker_file(rw)
    assert wf.path == str(rw)
    assert wf.executable == str(exe)
    assert wf.requirements == JobRequirements(IOType("Edges", "Mesh2D"), "edge_mesher")
    assert wf.worker_name == "edge_mesher"  # the executable's name without extension
    assert wf.arguments == ()
    assert dict(wf.environment) == {}
    assert wf.requirements.content == b""
    assert wf.requirements.content_format == "USER"
    hash(wf)  # usable as a key


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "reqs.json").write_text('{"order": 2}')
    rw = write_worker_file(
        tmp_path,
        WorkerName="Mesher",
        Tag={"quality": "draft", "sizes": [1, 2]},
        Arguments=["--config=@SELF@", "@SELF@:@SELF@", "plain"],
        Environment={"OMP_NUM_THREADS": "1", "EMPTY": ""},
        File="reqs.json",
        FileFormat="json",
    )
    wf = load_worker_file(rw)
    reqs = wf.requirements
    assert reqs.worker_name == "Mesher"
    assert reqs.tag == {"quality": "draft", "sizes": [1, 2]}
    assert reqs.content == b'{"order": 2}'
    assert reqs.content_format == "JSON"
    # only the first @SELF@ of each argument is replaced, with the absolute path
    assert wf.arguments == (f"--config={rw}", f"{rw}:@SELF@", "plain")
    assert dict(wf.environment) == {"OMP_NUM_THREADS": "1", "EMPTY": ""}
    assert "OMP_NUM_THREADS" not in os.environ or os.environ["OMP_NUM_THREADS"] != "x"
    # a job asking for this worker by name and tag matches it; another tag does not
    job = JobRequirements(
        IOType("Edges", "Mesh2D"), "Mesher", {"sizes": [1, 2], "quality": "draft"}
    )
    assert matches(job, reqs)
    assert not matches(JobRequirements(IOType("Edges", "Mesh2D"), tag="final"), reqs)


@pytest.mark.parametrize("tag", [None, 7, "gpu", [1, "a"], {"a": {"b": None}}, True])
def test_tag_is_any_json_value(tmp_path: Path, tag: object) -> None:
    rw = tmp_path / "t.rw"
    body = {"ExecutableName": PROBE, "InputType": "A", "OutputType": "B", "Tag": tag}
    rw.write_text(json.dumps(body))
    assert load_worker_file(rw).requirements.tag == tag


def test_relative_executable_is_found_next_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "bin"
    sub.mkdir()
    exe = write_executable(sub / "mesher")
    write_executable(tmp_path / "remus-test-only-here")
    wf = load_worker_file(write_worker_file(tmp_path, ExecutableName="bin/mesher"))
    assert wf.executable == str(exe)
    # a bare name not on PATH is looked for next to the file
    wf = load_worker_file(write_worker_file(tmp_path, ExecutableName="remus-test-only-here"))
    assert wf.executable == str(tmp_path / "remus-test-only-here")
    assert wf.worker_name == "remus-test-only-here"


def test_dot_slash_prefers_the_file_folder_over_path(tmp_path: Path) -> None:
    write_executable(tmp_path / "sh")  # also /bin/sh on PATH
    assert load_worker_file(write_worker_file(tmp_path, ExecutableName="./sh")).executable == str(
        tmp_path / "sh"
    )
    assert load_worker_file(write_worker_file(tmp_path, ExecutableName="sh")).executable != str(
        tmp_path / "sh"
    )


def test_bare_executable_name_is_found_on_path(tmp_path: Path) -> None:
    wf = load_worker_file(write_worker_file(tmp_path, ExecutableName="sh"))
    assert os.path.isabs(wf.executable)
    assert os.path.basename(wf.executable) == "sh"
    assert wf.worker_name == "sh"


def test_relative_to_file_not_to_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "workers"
    folder.mkdir()
    write_executable(folder / "w.sh")
    rw = write_worker_file(folder, ExecutableName="w.sh")
    monkeypatch.chdir(tmp_path)
    assert load_worker_file(Path("workers/probe.rw")).executable == str(folder / "w.sh")
    assert load_worker_file(Path("workers/probe.rw")).path == str(rw)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("", "not valid JSON"),
    ],
)
def test_bad_json(tmp_path: Path, text: str, needle: str) -> None:
    rw = tmp_path / "bad.rw"
    rw.write_text(text)
    with pytest.raises(WorkerFileError) as info:
        load_worker_file(rw)
    assert needle in str(info.value)
    assert info.value.path == str(rw)
    assert str(rw) in str(info.value)


@pytest.mark.parametrize("key", ["ExecutableName", "InputType", "OutputType"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    rw = tmp_path / "m.rw"
    body = {"ExecutableName": PROBE, "InputType": "A", "OutputType": "B"}
    del body[key]
    rw.write_text(json.dumps(body))
    with pytest.raises(WorkerFileError, match=f'missing required key "{key}"'):
        load_worker_file(rw)


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ({"InputType": ""}, '"InputType" must be a non-empty string'),
        ({"OutputType": 3}, '"OutputType" must be a non-empty string'),
        ({"WorkerName": ["x"]}, '"WorkerName" must be a string'),
        ({"Arguments": "a b"}, '"Arguments" must be a list of strings'),
        ({"Arguments": ["a", 1]}, '"Arguments" must be a list of strings'),
        ({"Environment": ["A=1"]}, '"Environment" must be an object of strings'),
        ({"Environment": {"N": 1}}, 'must be a string: write "1" in quotes'),
        ({"Environment": {"A=B": "1"}}, "invalid variable name"),
        ({"FileFormat": "YAML"}, '"FileFormat" must be one of USER, JSON, XML, BSON'),
        ({"File": "absent.txt"}, "cannot read"),
        ({"File": 5}, '"File" must be a file name'),
    ],
)
def test_wrong_values_say_what_to_fix(tmp_path: Path, keys: dict, needle: str) -> None:
    rw = write_worker_file(tmp_path, **keys)
    with pytest.raises(WorkerFileError) as info:
        load_worker_file(rw)
    assert needle in info.value.problem


def test_executable_not_found(tmp_path: Path) -> None:
    rw = write_worker_file(tmp_path, ExecutableName="no-such-mesher-xyz")
    with pytest.raises(WorkerFileError) as info:
        load_worker_file(rw)
    problem = info.value.problem
    assert "'no-such-mesher-xyz' not found" in problem
    assert str(tmp_path / "no-such-mesher-xyz") in problem
    assert "on PATH" in problem


def test_executable_not_executable(tmp_path: Path) -> None:
    exe = tmp_path / "plain.txt"
    exe.write_text("not a program")
    rw = write_worker_file(tmp_path, ExecutableName="plain.txt")
    with pytest.raises(WorkerFileError, match="is not executable; run: chmod \\+x"):
        load_worker_file(rw)


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    assert is_worker_file("a.rw") and is_worker_file("B.RW") and is_worker_file("c.Rw")
    assert not is_worker_file("d.rwx") and not is_worker_file("rw")
    write_worker_file(tmp_path, "lower.rw", InputType="L")
    write_worker_file(tmp_path, "UPPER.RW", InputType="U")
    write_worker_file(tmp_path, "notes.json", InputType="N")
    files, errors = scan([tmp_path])
    assert errors == []
    assert sorted(f.io_type.input for f in files) == ["L", "U"]


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        (None, b"\x00any bytes\xff"),
        ("USER", b"free text"),
        ("JSON", b'{"a": [1, 2]}'),
        ("XML", b"<mesh order='2'/>"),
        ("BSON", b"\x05\x00\x00\x00\x00"),
        ("xml", b"<a/>"),
    ],
)
def test_requirement_file_formats(tmp_path: Path, fmt: str | None, content: bytes) -> None:
    (tmp_path / "req.dat").write_bytes(content)
    wf = load_worker_file(write_worker_file(tmp_path, File="req.dat", FileFormat=fmt))
    assert wf.requirements.content == content
    assert wf.requirements.content_format == (fmt or "USER").upper()


@pytest.mark.parametrize(("fmt", "content"), [("JSON", b"{oops"), ("XML", b"<a><b></a>")])
def test_requirement_file_that_does_not_parse(tmp_path: Path, fmt: str, content: bytes) -> None:
    (tmp_path / "req.dat").write_bytes(content)
    rw = write_worker_file(tmp_path, File="req.dat", FileFormat=fmt)
    with pytest.raises(WorkerFileError, match=f'is not valid {fmt}.*"FileFormat": "USER"'):
        load_worker_file(rw)


def test_unknown_key_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rw = write_worker_file(tmp_path, Argument=["x"])
    assert load_worker_file(rw).arguments == ()
    assert "did you mean 'Arguments'" in caplog.text


def test_scan_keeps_good_files_and_reports_bad_ones(tmp_path: Path) -> None:
    write_worker_file(tmp_path, "a.rw", InputType="A")
    write_worker_file(tmp_path, "b.rw", ExecutableName="missing-exe-xyz")
    (tmp_path / "c.rw").write_text("{")
    other = tmp_path / "other"
    other.mkdir()
    write_worker_file(other, "d.rw", InputType="D")
    files, errors = scan([tmp_path, other, tmp_path / "a.rw", tmp_path / "nowhere"])
    assert [f.io_type.input for f in files] == ["A", "D"]  # a.rw once, though listed twice
    problems = {os.path.basename(e.path): e.problem for e in errors}
    assert set(problems) == {"b.rw", "c.rw", "nowhere"}
    assert "no such folder" in problems["nowhere"]


def test_check_report(tmp_path: Path) -> None:
    good = write_worker_file(tmp_path, "good.rw")
    bad = write_worker_file(tmp_path, "bad.rw", OutputType=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    results = check_worker_dirs([tmp_path, empty, tmp_path / "missing"])
    verdicts = dict(results)
    assert verdicts[str(good)] is None
    assert verdicts[str(bad)] == 'missing required key "OutputType"'
    assert "no .rw worker files" in (verdicts[str(empty)] or "")
    assert "no such folder" in (verdicts[str(tmp_path / "missing")] or "")
    report = format_check_report(results)
    assert f"ok    {good}" in report
    assert f'FAIL  {bad}: missing required key "OutputType"' in report
    assert report.splitlines()[-1] == "1 usable, 3 with problems"


def test_slots_reach_the_spawned_worker_in_its_environment(tmp_path: Path) -> None:
    wf = load_worker_file(write_worker_file(tmp_path, Slots=4))
    assert wf.environment["REMUS_SLOTS"] == "4"
    assert "REMUS_SLOTS" not in load_worker_file(write_worker_file(tmp_path)).environment


@pytest.mark.parametrize("slots", [0, 1025, "4", 2.5, True])
def test_bad_slots_are_refused_with_the_rule(tmp_path: Path, slots: object) -> None:
    with pytest.raises(WorkerFileError, match='"Slots" must be a whole number from 1 to 1024'):
        load_worker_file(write_worker_file(tmp_path, Slots=slots))


def test_a_worker_takes_its_slots_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from remus.worker.worker import slots_from_env

    monkeypatch.setenv("REMUS_SLOTS", "3")
    assert slots_from_env() == 3
    monkeypatch.setenv("REMUS_SLOTS", "many")
    with pytest.raises(ValueError, match="REMUS_SLOTS='many'"):
        slots_from_env()
    monkeypatch.delenv("REMUS_SLOTS")
    assert slots_from_env() == 1
