"""The wire format on its own: every message round-trips, and bad input only ever raises
ProtocolError with a message that says what was wrong (no sockets here)."""

from __future__ import annotations

import array
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from remus import protocol as p
from remus.errors import ProtocolError
from remus.types import IOType, JobRequirements, Status

try:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a dev dependency; the plain tests run without it
    given = None

EDGES = IOType("Edges", "Mesh2D")
PLAIN = JobRequirements(EDGES)
NAMED = JobRequirements(EDGES, "EdgeMesher", {"quality": "fine", "n": 3}, b"<xml/>", "XML")
OTHER = JobRequirements(IOType("Mesh2D", "Mesh3D"), "", ["a", 1, None])

#: the smallest content or result that travels as a frame; EXACT is the largest inline one
BIG = bytes(range(256)) * (p.INLINE_MAX // 256) + b"!"
EXACT = b"e" * p.INLINE_MAX
assert len(BIG) == p.INLINE_MAX + 1
#: file data that travels as a frame (distinct from BIG, to see frame order)
BIG_FILE = b"f" * (2 * p.INLINE_MAX)
#: a stored (streamed) file's reference
STORED = p.BlobRef("ab" * 16, 5 * 2**30, "cd" * 32)
#: a file set with an inline, a framed, a path-only and a stored entry, arguments and a host
FILES = p.FileSet(
    [
        p.FileEntry("/in/small.txt", "r", b"text"),
        p.FileEntry("/in/big.bin", "rb", BIG_FILE),
        p.FileEntry("/in/path-only.vtk", "rb"),
        p.FileEntry("/in/huge.bin", "rb", None, STORED),
    ],
    ["--fast", "-n", "3"],
    "host-1",
)

# One instance of every message class, with every field away from its default where it has one,
# and every bulk-carrying message with contents on both sides of INLINE_MAX (and an empty one).
# Sequence fields are lists (and SubmittedJob/AssignedJob keys tuples) because that is what
# decode builds; `same` below compares them loosely anyway.
SAMPLES: list[p.Message] = [
    p.HelloRequest(13),
    p.IoTypesRequest(1),
    p.CanMeshRequest(2, NAMED),
    p.RequirementsRequest(3, EDGES),
    p.SubmitRequest(
        4,
        [
            p.SubmittedJob("a-1", PLAIN, ("data",), [b"one"]),
            p.SubmittedJob("a-2", NAMED, ("data", "extra"), [b"two", BIG]),
            p.SubmittedJob("a-3", PLAIN, (), []),
            p.SubmittedJob("a-4", OTHER, ("data",), [b""]),
            p.SubmittedJob("a-5", PLAIN, ("x", "y", "z"), [EXACT, BIG * 2, b"\x00" * 5000]),
            p.SubmittedJob("a-6", PLAIN, ("data",), [BIG], FILES),
            p.SubmittedJob("a-7", PLAIN, (), [], p.FileSet()),
        ],
        {"priority": 3, "protected": False, "parent": "m-1", "note": "x"},
    ),
    p.StatusRequest(5, ["a-1", "a-2"]),
    p.TerminateRequest(6, ["a-1"]),
    p.ProgressRequest(7, "a-1", since=12, wait=2.5, with_result=True),
    p.ResultRequest(8, ["a-1", "nope"]),
    p.CollectRequest(9, "watch-1", ["a-1", "a-2"], wait=1.5, max=7),
    p.WorkersRequest(14),
    p.ListJobsRequest(15, Status.FAILED, EDGES, 20),
    p.StatsRequest(16),
    p.ControlRequest(17, "a-1", BIG),
    p.PutRequest(18, "ab" * 16, 4096, 4096 + len(BIG), BIG, "cd" * 32),
    p.GetRequest(19, "ab" * 16, 8192, 4 * 2**20),
    p.Reply(
        10,
        {"results": [["a-1", 3, "", "", b"small"], ["a-2", 3, "", "", None]], "remaining": 1},
        [BIG],
    ),
    p.Error(11, "busy", "the queue is full"),
    p.Register(NAMED, 0.5, "host-1", 4321, credit=3, held=["a-1", "a-2"], slots=4),
    p.Report(
        started=["a-1"],
        progress=[("a-1", 50, "half"), ("a-1", None, "no value")],
        results=[
            ("a-1", b"r1"),
            ("a-2", BIG),
            ("a-4", b""),
            ("a-5", EXACT),
            ("a-6", b"", FILES),
            ("a-7", BIG, p.FileSet([p.FileEntry("/out/x", "rb", b"x")])),
        ],
        failures=[("a-3", "it broke", "Traceback ...")],
        credit=2,
        seq=7,
        used=[("a-1", 1000, 0.5)],
        usage=(2000, 3000, 1.5),
        stopped=["a-8"],
        # (inline only: a framed checkpoint is tested on its own, so that breaking
        # "results" below leaves no frame that another field refers to)
        checkpoints=[("a-1", b"cp"), ("a-9", b"")],
    ),
    p.Heartbeat((1, 2, 0.5), client="tcp://broker-host:50505"),
    p.Goodbye(),
    p.Jobs(
        [
            p.AssignedJob("a-1", PLAIN, ("data",), [b"one"]),
            p.AssignedJob("a-2", NAMED, ("data", "extra"), [BIG, b"three"]),
            p.AssignedJob("a-3", OTHER, (), []),
            p.AssignedJob("a-6", PLAIN, ("data",), [b"d"], FILES),
            # the fifth element, extra: a framed checkpoint, a parent, spare capacity
            p.AssignedJob(
                "a-7", PLAIN, ("data",), [b"d"], checkpoint=BIG, parent="m-1", protected=False
            ),
            p.AssignedJob("a-8", OTHER, (), [], FILES, checkpoint=b"cp"),
            p.AssignedJob("a-9", PLAIN, (), [], parent="m-1"),
        ],
        ack=6,
    ),
    p.Cancel(["a-1", "a-2"], "preempted"),
    p.Controls([("a-1", 1, b"stop"), ("a-1", 2, BIG), ("a-2", 1, b"")]),
    p.Shutdown("broker stopping"),
    p.Ack(7, [("a-1", "the job is already TERMINATED: terminated by a client")]),
]

#: the blob frames each bulk-carrying sample must encode to, in order (a job's contents, then
#: its files' data)
SAMPLE_FRAMES: dict[type[p.Message], list[bytes]] = {
    p.SubmitRequest: [BIG, BIG * 2, BIG, BIG_FILE],
    p.Reply: [BIG],
    p.Report: [BIG, BIG_FILE, BIG],
    p.Jobs: [BIG, BIG_FILE, BIG, BIG_FILE],
    p.ControlRequest: [BIG],
    p.Controls: [BIG],
    p.PutRequest: [BIG],
}


def norm(value: Any) -> Any:
    """Lists and tuples alike, any buffer as its bytes, dataclasses field by field
    (JobRequirements by its own ==)."""
    if isinstance(value, zmq.Frame):
        return value.bytes
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, JobRequirements):
        fields = dataclasses.fields(value)
        return (type(value), {f.name: norm(getattr(value, f.name)) for f in fields})
    return value


def same(a: p.Message, b: p.Message) -> bool:
    return norm(a) == norm(b)


def frames_of(command: bytes, body: Any, *blobs: bytes, packed: bool = False) -> list[bytes]:
    return [p.VERSION, command, body if packed else p.pack(body), *blobs]


def body_of(msg: p.Message) -> dict[str, Any]:
    """The msgpack body of a sample as a plain dict, to break on purpose."""
    return p.unpack(p.encode(msg)[2])


def blobs_of(msg: p.Message) -> list[Any]:
    """The blob frames ``msg`` encodes to (what follows the body)."""
    return list(p.encode(msg)[3:])


def sample(cls: type[p.Message]) -> p.Message:
    return next(m for m in SAMPLES if type(m) is cls)


def decode_error(frames: list[Any], allowed: frozenset[bytes] | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        p.decode(frames, allowed)
    assert str(info.value), "a ProtocolError must say what was wrong"
    return info.value


# ---------------------------------------------------------------------------- round trips


def test_samples_cover_every_message_class() -> None:
    assert {type(m) for m in SAMPLES} == set(p.MESSAGES.values())
    assert {c.value for c in p.Command} == set(p.MESSAGES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert frames[0] == p.VERSION
    assert frames[1] == msg.COMMAND.value
    body, blobs = msg.parts()
    assert frames[2] == p.pack(body)
    assert list(frames[3:]) == list(blobs) == SAMPLE_FRAMES.get(type(msg), [])
    assert all(f is b for f, b in zip(frames[3:], blobs, strict=True)), "encode copies no blob"
    back = p.decode(frames)
    assert type(back) is type(msg)
    assert same(back, msg), f"{back!r}\n!=\n{msg!r}"
    # and once more, so what decode builds encodes to the very same frames
    assert p.encode(back) == frames


@pytest.mark.parametrize(
    "msg",
    [
        p.IoTypesRequest(0),
        p.SubmitRequest(0, []),
        p.StatusRequest(0, []),
        p.ProgressRequest(0, "j"),
        p.CollectRequest(0, "w"),
        p.ListJobsRequest(0),
        p.Reply(0),
        p.Error(-1, "version", ""),
        p.Register(PLAIN, 1.0, "", 0),
        p.Report(),
        p.Jobs([]),
        p.Cancel([]),
        p.Controls([]),
        p.ControlRequest(0, "j"),
        p.Heartbeat(),
        p.Shutdown(),
        p.Ack(1),
        p.Ack(2**63 - 1, []),
    ],
    ids=lambda m: type(m).__name__,
)
def test_defaults_and_empty_sequences_round_trip(msg: p.Message) -> None:
    assert same(p.decode(p.encode(msg)), msg)


def test_decode_fills_defaults_for_optional_fields() -> None:
    prog = p.decode(frames_of(b"progress", {"rid": 1, "id": "j"}))
    assert prog == p.ProgressRequest(1, "j", 0, 0.0, False)
    coll = p.decode(frames_of(b"collect", {"rid": 1, "watch": "w"}))
    assert same(coll, p.CollectRequest(1, "w", [], 0.0, 10_000))
    err = p.decode(frames_of(b"error", {"code": "x", "message": "y"}))
    assert err == p.Error(-1, "x", "y")
    reg = p.decode(
        frames_of(b"register", {"reqs": PLAIN.to_wire(), "heartbeat": 2, "host": "h", "pid": 1})
    )
    assert same(reg, p.Register(PLAIN, 2.0, "h", 1, 0, []))
    assert isinstance(reg.heartbeat, float) and reg.slots == 1
    assert p.decode(frames_of(b"cancel", {"ids": ["a"]})) == p.Cancel(["a"], "")
    assert p.decode(frames_of(b"heartbeat", {})) == p.Heartbeat(None, "")
    report = p.decode(frames_of(b"report", {}))
    assert isinstance(report, p.Report)
    assert list(report.stopped) == [] and list(report.checkpoints) == []
    # a control request without data takes it from the next frame, like any nil slot
    control = p.decode(frames_of(b"control", {"rid": 1, "id": "j"}, b"go"))
    assert isinstance(control, p.ControlRequest) and bytes(control.data) == b"go"


@pytest.mark.parametrize(
    "opts",
    [
        {"priority": p.MAX_PRIORITY},
        {"priority": -p.MAX_PRIORITY},
        {"priority": 0, "protected": True},
        {"protected": False, "parent": "m-1"},
        {"parent": ""},
    ],
    ids=repr,
)
def test_submit_scheduling_options_in_range_round_trip(opts: dict[str, Any]) -> None:
    msg = p.SubmitRequest(1, [p.SubmittedJob("j", PLAIN)], opts)
    back = p.decode(p.encode(msg))
    assert isinstance(back, p.SubmitRequest) and back.options == opts


def test_a_bool_priority_is_refused() -> None:
    err = decode_error(p.encode(p.SubmitRequest(1, [], {"priority": True})))
    assert "'priority'" in str(err) and "bool" in str(err)


def test_requirements_travel_once_per_distinct_value() -> None:
    jobs = [p.SubmittedJob(f"j{i}", PLAIN, ()) for i in range(50)]
    body = body_of(p.SubmitRequest(1, jobs))
    assert body["reqs"] == [PLAIN.to_wire()]
    assert {j[1] for j in body["jobs"]} == {0}


def test_tag_compares_by_canonical_json_after_round_trip() -> None:
    a = JobRequirements(EDGES, "", {"b": 2, "a": [1, 2]})
    b = JobRequirements(EDGES, "", {"a": [1, 2], "b": 2})
    back = p.decode(p.encode(p.CanMeshRequest(1, a)))
    assert back.requirements == b


def as_received(frames: list[Any]) -> list[Any]:
    """Frames the way a socket hands them over with copy=False: zmq.Frame objects."""
    return [zmq.Frame(bytes(f)) for f in frames]


def file_data(fs: p.FileSet | None) -> list[Any]:
    return [] if fs is None else [e.data for e in fs.files if e.data is not None]


def checkpoint_of(job: p.SubmittedJob | p.AssignedJob) -> list[Any]:
    checkpoint = getattr(job, "checkpoint", None)
    return [] if checkpoint is None else [checkpoint]


def bulk_values(msg: p.Message) -> list[Any]:
    """Every content, result, file's data and checkpoint a message carries, in wire order (a
    job's contents, its files, its checkpoint; a report's checkpoints before its results)."""
    if isinstance(msg, (p.SubmitRequest, p.Jobs)):
        return [v for j in msg.jobs for v in (*j.values, *file_data(j.files), *checkpoint_of(j))]
    if isinstance(msg, p.Report):
        return [c[1] for c in msg.checkpoints] + [
            v for r in msg.results for v in (r[1], *file_data(r[2] if len(r) == 3 else None))
        ]
    raise TypeError(type(msg).__name__)


@pytest.mark.parametrize("cls", [p.SubmitRequest, p.Jobs, p.Report], ids=lambda c: c.__name__)
def test_blob_frames_pass_through_without_copying(cls: type[p.Message]) -> None:
    """The broker decodes zmq.Frame objects (copy=False): a content or result that travelled
    as a frame must come out of decode as that very frame object, and go back out of encode
    as it too."""
    msg = sample(cls)
    frames = as_received(p.encode(msg))
    back = p.decode(frames)
    large = [v for v in bulk_values(back) if len(v) > p.INLINE_MAX]
    assert len(large) == len(frames) - 3 >= 1
    assert all(v is f for v, f in zip(large, frames[3:], strict=True))
    small = [v for v in bulk_values(back) if len(v) <= p.INLINE_MAX]
    assert all(type(v) is bytes for v in small), "inline ones are plain bytes from the body"
    assert [bytes(v) for v in bulk_values(back)] == [bytes(v) for v in bulk_values(msg)]
    again = p.encode(back)
    assert all(a is f for a, f in zip(again[3:], frames[3:], strict=True))


def test_reply_frames_pass_through_without_copying() -> None:
    frames = as_received(p.encode(sample(p.Reply)))
    back = p.decode(frames)
    assert len(back.frames) == 1 and back.frames[0] is frames[3]


# ---------------------------------------------------------------------------- inline or frame

SMALL_SIZES = [0, 1, 255, p.INLINE_MAX - 1, p.INLINE_MAX]
LARGE_SIZES = [p.INLINE_MAX + 1, p.INLINE_MAX + 2, 4 * p.INLINE_MAX, 1 << 20]


def sized(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def one_value(cls: type[p.Message], value: Any) -> p.Message:
    """A message of kind ``cls`` that carries ``value`` as its one content or result."""
    if cls is p.SubmitRequest:
        return p.SubmitRequest(1, [p.SubmittedJob("j", PLAIN, ("data",), [value])])
    if cls is p.Jobs:
        return p.Jobs([p.AssignedJob("j", PLAIN, ("data",), [value])])
    return p.Report(results=[("j", value)])


def slots(body: dict[str, Any]) -> list[Any]:
    """The content or result slots of a body, in wire order."""
    if "jobs" in body:
        return [pair[1] for job in body["jobs"] for pair in job[2]]
    return [pair[1] for pair in body.get("results", [])]


BULK = [p.SubmitRequest, p.Jobs, p.Report]


@pytest.mark.parametrize("size", SMALL_SIZES, ids=str)
@pytest.mark.parametrize("cls", BULK, ids=lambda c: c.__name__)
def test_up_to_inline_max_bytes_travel_inline(cls: type[p.Message], size: int) -> None:
    value = sized(size)
    frames = p.encode(one_value(cls, value))
    assert len(frames) == 3, "no blob frame"
    assert slots(p.unpack(frames[2])) == [value]
    (back,) = bulk_values(p.decode(frames))
    assert type(back) is bytes and back == value


@pytest.mark.parametrize("size", LARGE_SIZES, ids=str)
@pytest.mark.parametrize("cls", BULK, ids=lambda c: c.__name__)
def test_over_inline_max_bytes_travel_as_a_frame(cls: type[p.Message], size: int) -> None:
    value = sized(size)
    frames = p.encode(one_value(cls, value))
    assert len(frames) == 4 and frames[3] is value, "the value itself is the frame"
    assert slots(p.unpack(frames[2])) == [None]
    assert len(frames[2]) < 200, "and none of it is in the body"
    received = as_received(frames)
    (back,) = bulk_values(p.decode(received))
    assert back is received[3]


@pytest.mark.parametrize("cls", BULK, ids=lambda c: c.__name__)
def test_the_boundary_is_exactly_inline_max(cls: type[p.Message]) -> None:
    at, over = sized(p.INLINE_MAX), sized(p.INLINE_MAX + 1)
    if cls is p.Report:
        msg: p.Message = p.Report(results=[("a", at), ("b", over)])
    elif cls is p.Jobs:
        msg = p.Jobs([p.AssignedJob("j", PLAIN, ("a", "b"), [at, over])])
    else:
        msg = p.SubmitRequest(1, [p.SubmittedJob("j", PLAIN, ("a", "b"), [at, over])])
    frames = as_received(p.encode(msg))
    assert len(frames) == 4
    assert slots(p.unpack(frames[2].bytes)) == [at, None]
    got_at, got_over = bulk_values(p.decode(frames))
    assert type(got_at) is bytes and got_at == at
    assert got_over is frames[3], "the very frame object, not a copy"


@pytest.mark.parametrize(
    "make", [bytes, bytearray, memoryview, zmq.Frame], ids=lambda t: t.__name__
)
@pytest.mark.parametrize("size", [0, 5, p.INLINE_MAX], ids=str)
def test_any_small_buffer_goes_inline_as_bin(make: Callable[[bytes], Any], size: int) -> None:
    frames: list[Any] = []
    slot = p.inline(make(sized(size)), frames)
    assert frames == []
    assert bytes(slot) == sized(size)
    body = p.unpack(p.pack({"slot": slot}))
    assert type(body["slot"]) is bytes, "packed as msgpack bin, never str"


@pytest.mark.parametrize(
    "make", [bytes, bytearray, memoryview, zmq.Frame], ids=lambda t: t.__name__
)
def test_any_large_buffer_is_the_frame_itself(make: Callable[[bytes], Any]) -> None:
    value = make(sized(p.INLINE_MAX + 1))
    frames: list[Any] = []
    assert p.inline(value, frames) is None
    assert len(frames) == 1 and frames[0] is value


@pytest.mark.parametrize(
    "value",
    [
        memoryview(array.array("d", range(3000))),  # 3,000 items, 24,000 bytes
        memoryview(sized(2 * p.INLINE_MAX)).cast("B", (2, p.INLINE_MAX)),  # len() is 2
    ],
    ids=["doubles", "2d"],
)
def test_inline_max_counts_bytes_not_items(value: memoryview) -> None:
    assert value.nbytes > p.INLINE_MAX
    frames = p.encode(p.Report(results=[("j", value)]))
    assert len(frames) == 4, f"a {value.nbytes}-byte result went inline"
    assert len(frames[2]) < 200


def test_frames_are_taken_in_body_order_across_jobs_and_keys() -> None:
    big = [sized(p.INLINE_MAX + 1 + i) for i in range(4)]
    msg = p.SubmitRequest(
        1,
        [
            p.SubmittedJob("j1", PLAIN, ("a", "b", "c"), [big[0], b"s1", big[1]]),
            p.SubmittedJob("j2", NAMED, ("d",), [b"s2"]),
            p.SubmittedJob("j3", PLAIN, ("e", "f"), [big[2], big[3]]),
        ],
    )
    frames = p.encode(msg)
    assert frames[3:] == big
    back = p.decode(as_received(frames))
    assert [(j.id, j.keys, [bytes(v) for v in j.values]) for j in back.jobs] == [
        ("j1", ("a", "b", "c"), [big[0], b"s1", big[1]]),
        ("j2", ("d",), [b"s2"]),
        ("j3", ("e", "f"), [big[2], big[3]]),
    ]


#: FILES on the wire
FILES_WIRE = {
    "files": [
        ["/in/small.txt", "r", b"text"],
        ["/in/big.bin", "rb", None],
        ["/in/path-only.vtk", "rb"],
        ["/in/huge.bin", "rb", {"blob": "ab" * 16, "size": 5 * 2**30, "sha256": "cd" * 32}],
    ],
    "args": ["--fast", "-n", "3"],
    "host": "host-1",
}


def test_wire_shape_of_contents_and_results() -> None:
    """The documented shapes: jobs ``[id, reqs_index, [[key, bin|nil], ...], files?, extra?]``
    (files nil before an extra when the job has none), results ``[[id, bin|nil, files?],
    ...]``, checkpoints ``[[id, bin|nil], ...]``, control messages ``[[id, seq, bin|nil]]``."""
    submit = body_of(sample(p.SubmitRequest))
    assert submit["jobs"] == [
        ["a-1", 0, [["data", b"one"]]],
        ["a-2", 1, [["data", b"two"], ["extra", None]]],
        ["a-3", 0, []],
        ["a-4", 2, [["data", b""]]],
        ["a-5", 0, [["x", EXACT], ["y", None], ["z", b"\x00" * 5000]]],
        ["a-6", 0, [["data", None]], FILES_WIRE],
        ["a-7", 0, [], {"files": []}],
    ]
    assert submit["reqs"] == [PLAIN.to_wire(), NAMED.to_wire(), OTHER.to_wire()]
    jobs = body_of(sample(p.Jobs))
    assert jobs["jobs"] == [
        ["a-1", 0, [["data", b"one"]]],
        ["a-2", 1, [["data", None], ["extra", b"three"]]],
        ["a-3", 2, []],
        ["a-6", 0, [["data", b"d"]], FILES_WIRE],
        [
            "a-7",
            0,
            [["data", b"d"]],
            None,
            {"checkpoint": None, "parent": "m-1", "protected": False},
        ],
        ["a-8", 2, [], FILES_WIRE, {"checkpoint": b"cp"}],
        ["a-9", 0, [], None, {"parent": "m-1"}],
    ]
    report = body_of(sample(p.Report))
    assert report["checkpoints"] == [["a-1", b"cp"], ["a-9", b""]]
    assert report["stopped"] == ["a-8"]
    assert report["results"] == [
        ["a-1", b"r1"],
        ["a-2", None],
        ["a-4", b""],
        ["a-5", EXACT],
        ["a-6", b"", FILES_WIRE],
        ["a-7", None, {"files": [["/out/x", "rb", b"x"]]}],
    ]
    assert body_of(sample(p.Controls)) == {
        "messages": [["a-1", 1, b"stop"], ["a-1", 2, None], ["a-2", 1, b""]]
    }
    assert body_of(sample(p.ControlRequest)) == {"rid": 17, "id": "a-1", "data": None}
    assert body_of(p.ControlRequest(1, "a-1", b"go")) == {"rid": 1, "id": "a-1", "data": b"go"}
    assert body_of(sample(p.Cancel)) == {"ids": ["a-1", "a-2"], "reason": "preempted"}
    assert body_of(sample(p.Heartbeat)) == {
        "usage": [1, 2, 0.5],
        "client": "tcp://broker-host:50505",
    }
    assert body_of(sample(p.Register))["slots"] == 4
    # and what is at its default stays out of the body
    assert "slots" not in body_of(p.Register(PLAIN, 1.0, "h", 1))
    assert "reason" not in body_of(p.Cancel(["a-1"]))
    assert body_of(p.Heartbeat()) == {}
    assert set(body_of(p.Report(credit=1))) == {"credit"}
    row = body_of(p.Jobs([p.AssignedJob("a-1", PLAIN, (), [], protected=True)]))["jobs"][0]
    assert row == ["a-1", 0, []], "a protected job with no checkpoint and no parent has no extra"


def test_a_reports_checkpoint_frames_come_before_its_results() -> None:
    """Checkpoints are applied before results, and their frames come first."""
    cp, result = sized(p.INLINE_MAX + 1), sized(p.INLINE_MAX + 2)
    msg = p.Report(results=[("a-1", result)], checkpoints=[("a-1", cp), ("a-2", b"small")])
    frames = p.encode(msg)
    assert frames[3:] == [cp, result]
    back = p.decode(as_received(frames))
    assert isinstance(back, p.Report)
    assert back.checkpoints[0][1] is not None and bytes(back.checkpoints[0][1]) == cp
    assert back.checkpoints[1] == ("a-2", b"small")
    assert bytes(back.results[0][1]) == result
    assert same(back, msg)


def test_a_jobs_row_with_nil_files_and_with_an_empty_extra() -> None:
    """nil files means no files (a row may carry it before its extra, or even alone); an
    empty extra means the defaults; either way the row goes back out in its shortest form."""
    body = {
        "reqs": [PLAIN.to_wire()],
        "jobs": [["a-1", 0, [], None], ["a-2", 0, [], None, {}], ["a-3", 0, [], FILES_WIRE, {}]],
    }
    back = p.decode(frames_of(b"jobs", body, BIG_FILE))
    assert isinstance(back, p.Jobs)
    one, two, three = back.jobs
    assert one.files is None and two.files is None and three.files is not None
    for job in back.jobs:
        assert (job.checkpoint, job.parent, job.protected) == (None, "", True)
    assert [len(r) for r in body_of(back)["jobs"]] == [3, 3, 4]


def test_a_nil_file_set_is_refused_in_submit_and_report() -> None:
    for command in (b"submit", b"report"):
        err = decode_error(with_files(command, None))
        assert "files must be a map" in str(err), command


def test_decode_accepts_either_placement_and_encode_normalises_it() -> None:
    """A peer may inline more than INLINE_MAX or send a small content as a frame: both decode
    to the same value, and encoding again puts each where this side would."""
    big, small = sized(p.INLINE_MAX + 10), b"tiny"
    body = {"results": [["a", big], ["b", None]]}
    frames = [p.VERSION, b"report", p.pack(body), zmq.Frame(small)]
    back = p.decode(frames)
    assert [(i, bytes(v)) for i, v in back.results] == [("a", big), ("b", small)]
    again = p.encode(back)
    assert p.unpack(again[2])["results"] == [["a", None], ["b", small]]
    assert len(again) == 4 and again[3] is back.results[0][1]


@pytest.mark.parametrize("cls", BULK, ids=lambda c: c.__name__)
def test_parts_is_computed_afresh_each_time(cls: type[p.Message]) -> None:
    msg = sample(cls)
    assert p.encode(msg) == p.encode(msg)
    body1, blobs1 = msg.parts()
    body2, blobs2 = msg.parts()
    assert body1 == body2 and list(blobs1) == list(blobs2)
    assert msg.body() == body1


def check_body_and_blobs_agree_with_parts(msg: p.Message) -> None:
    body, blobs = msg.parts()
    assert msg.body() == body
    assert list(msg.blobs()) == list(blobs)


@pytest.mark.parametrize(
    "msg", [m for m in SAMPLES if type(m) not in BULK], ids=lambda m: type(m).__name__
)
def test_body_and_blobs_agree_with_parts(msg: p.Message) -> None:
    check_body_and_blobs_agree_with_parts(msg)


@pytest.mark.parametrize("cls", BULK, ids=lambda c: c.__name__)
def test_body_and_blobs_agree_with_parts_for_bulk_messages(cls: type[p.Message]) -> None:
    check_body_and_blobs_agree_with_parts(sample(cls))


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_decode_accepts_any_buffer_as_a_frame(msg: p.Message) -> None:
    frames = [memoryview(bytes(f)) for f in p.encode(msg)]
    back = p.decode(frames)
    assert type(back) is type(msg)


def test_command_sets_split_the_sockets() -> None:
    for msg in SAMPLES:
        cmd = msg.COMMAND.value
        if isinstance(msg, p.Request):
            assert cmd in p.CLIENT_COMMANDS
            # only file chunks are answered on both sockets
            assert (cmd in p.WORKER_COMMANDS) == (cmd in p.TRANSFER_COMMANDS)
    assert {b"put", b"get"} == p.TRANSFER_COMMANDS
    assert p.Command.REGISTER.value in p.WORKER_COMMANDS
    assert p.Command.JOBS.value in p.BROKER_TO_WORKER
    assert p.Command.ACK.value in p.BROKER_TO_WORKER
    assert p.Command.ACK.value not in p.WORKER_COMMANDS
    assert p.Command.REPLY.value in p.BROKER_TO_CLIENT


# ---------------------------------------------------------------------------- envelopes


@pytest.mark.parametrize("frames", [[], [p.VERSION], [p.VERSION, b"status"]], ids=len)
def test_too_few_frames(frames: list[bytes]) -> None:
    err = decode_error(frames)
    assert err.code == "bad-envelope"
    assert "at least 3 frames" in str(err) and f"got {len(frames)}" in str(err)


@pytest.mark.parametrize("version", [b"remus/2", b"remus/0", b"", b"\xff" * 100, b"REMUS/1"])
def test_wrong_version_names_both_versions(version: bytes) -> None:
    frames = p.encode(p.StatusRequest(1, ["a"]))
    err = decode_error([version, *frames[1:]])
    assert err.code == "version"
    assert "remus/1" in str(err)
    assert repr(version[:32]) in str(err)
    assert len(str(err)) < 300, "a hostile version frame must not blow up the log line"


@pytest.mark.parametrize("command", [b"fly", b"", b"STATUS", b"status ", b"\x00" * 1000])
def test_unknown_command(command: bytes) -> None:
    err = decode_error(frames_of(command, {"rid": 1}))
    assert err.code == "unknown-command"
    assert "unknown command" in str(err)


@pytest.mark.parametrize(
    ("allowed", "msg"),
    [
        (p.CLIENT_COMMANDS, p.Register(PLAIN, 1.0, "h", 1)),
        (p.CLIENT_COMMANDS, p.Reply(1)),
        (p.WORKER_COMMANDS, p.SubmitRequest(1, [])),
        (p.WORKER_COMMANDS, p.Jobs([])),
        (p.BROKER_TO_WORKER, p.StatusRequest(1, [])),
        (p.BROKER_TO_CLIENT, p.Heartbeat()),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, p.Message) else "",
)
def test_command_not_allowed_on_this_socket(allowed: frozenset[bytes], msg: p.Message) -> None:
    err = decode_error(p.encode(msg), allowed)
    assert err.code == "unknown-command"


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x82\xa3rid",  # truncated map
        b"\x81\xa3rid\x01\x80",  # extra bytes after the map
        b"\xd9\x05ab",  # str longer than the data
        b"\x81\x91\x01\x01",  # an array as a map key
        b"\x81\x01\x01",  # an int as a map key
        b"\x91" * 5000 + b"\x90",  # nested deeper than msgpack's stack
    ],
    ids=["reserved", "truncated", "extra", "short-str", "list-key", "int-key", "deep"],
)
def test_bad_msgpack(body: bytes) -> None:
    err = decode_error(frames_of(b"status", body, packed=True))
    assert err.code == "bad-message"
    assert "msgpack" in str(err)


@pytest.mark.parametrize(
    "body", [[1, 2], "rid", 1, None, True, b"\x80", 1.5], ids=lambda b: type(b).__name__
)
def test_body_must_be_a_map(body: Any) -> None:
    err = decode_error(frames_of(b"status", body))
    assert "must be a msgpack map" in str(err)


# ---------------------------------------------------------------------------- bodies

REQUIRED = {
    p.HelloRequest: ["rid"],
    p.IoTypesRequest: ["rid"],
    p.CanMeshRequest: ["rid", "reqs"],
    p.RequirementsRequest: ["rid", "io"],
    p.SubmitRequest: ["rid", "reqs", "jobs"],
    p.StatusRequest: ["rid", "ids"],
    p.TerminateRequest: ["rid", "ids"],
    p.ProgressRequest: ["rid", "id"],
    p.ResultRequest: ["rid", "ids"],
    p.CollectRequest: ["rid", "watch"],
    p.WorkersRequest: ["rid"],
    p.ListJobsRequest: ["rid"],
    p.StatsRequest: ["rid"],
    p.ControlRequest: ["rid", "id"],
    p.PutRequest: ["rid", "blob", "offset", "size"],
    p.GetRequest: ["rid", "blob", "offset", "length"],
    p.Reply: ["rid"],
    p.Error: ["code", "message"],
    p.Register: ["reqs", "heartbeat", "host", "pid"],
    p.Jobs: ["reqs", "jobs"],
    p.Cancel: ["ids"],
    p.Controls: ["messages"],
    p.Ack: ["seq"],
}


def test_required_table_names_every_message_with_fields() -> None:
    no_required = {p.Report, p.Heartbeat, p.Goodbye, p.Shutdown}
    assert set(REQUIRED) | no_required == set(p.MESSAGES.values())


@pytest.mark.parametrize(
    ("cls", "key"),
    [(cls, key) for cls, keys in REQUIRED.items() for key in keys],
    ids=lambda x: x.__name__ if isinstance(x, type) else x,
)
def test_missing_field(cls: type[p.Message], key: str) -> None:
    msg = sample(cls)
    body = body_of(msg)
    del body[key]
    err = decode_error(frames_of(msg.COMMAND.value, body, *blobs_of(msg)))
    assert err.code == "bad-message"
    assert f"missing field {key!r}" in str(err)


# (message class, field, bad value, words the error must contain)
WRONG_TYPES: list[tuple[type[p.Message], str, Any, str]] = [
    (p.IoTypesRequest, "rid", "1", "'rid'"),
    (p.IoTypesRequest, "rid", 1.0, "'rid'"),
    (p.IoTypesRequest, "rid", None, "'rid'"),
    (p.CanMeshRequest, "reqs", "Edges", "'reqs'"),
    (p.CanMeshRequest, "reqs", ["Edges", "Mesh2D"], "requirements"),
    (p.CanMeshRequest, "reqs", ["Edges", "Mesh2D", "", None, b"", "USER", "extra"], "requirements"),
    (p.CanMeshRequest, "reqs", ["Edges", 2, "", None, b"", "USER"], "requirements"),
    (p.CanMeshRequest, "reqs", ["", "Mesh2D", "", None, b"", "USER"], "requirements"),
    (p.CanMeshRequest, "reqs", ["Edges", "Mesh2D", 5, None, b"", "USER"], "requirements"),
    (p.CanMeshRequest, "reqs", ["Edges", "Mesh2D", "", None, "text", "USER"], "requirements"),
    (p.CanMeshRequest, "reqs", ["Edges", "Mesh2D", "", {b"k": 1}, b"", "USER"], "requirements"),
    (p.RequirementsRequest, "io", ["Edges"], "io type"),
    (p.RequirementsRequest, "io", ["Edges", None], "io type"),
    (p.RequirementsRequest, "io", "Edges->Mesh2D", "'io'"),
    (p.SubmitRequest, "jobs", {"a": 1}, "'jobs'"),
    (p.SubmitRequest, "jobs", [["a-1", 0]], "[id, reqs index, contents"),
    (p.SubmitRequest, "jobs", [["a-1", 0, [], {"files": []}, 1]], "[id, reqs index, contents"),
    (p.SubmitRequest, "jobs", [["a-1", 0, [], 1]], "files must be a map"),
    (p.SubmitRequest, "jobs", ["a-1"], "[id, reqs index, contents"),
    (p.SubmitRequest, "jobs", [[1, 0, []]], "job id"),
    (p.SubmitRequest, "jobs", [["", 0, []]], "job id"),
    (p.SubmitRequest, "jobs", [["x" * 129, 0, []]], "job id"),
    (p.SubmitRequest, "jobs", [["a-1", 0, "data"]], "contents must be a list"),
    (p.SubmitRequest, "jobs", [["a-1", 0, {"data": b"x"}]], "contents must be a list"),
    (p.SubmitRequest, "jobs", [["a-1", 0, None]], "contents must be a list"),
    (p.SubmitRequest, "jobs", [["a-1", 0, ["data"]]], "[key, bin or nil]"),
    (p.SubmitRequest, "jobs", [["a-1", 0, [1]]], "[key, bin or nil]"),
    (p.SubmitRequest, "jobs", [["a-1", 0, [["data", b"1"], ["data", b"2"]]]], "twice"),
    (p.SubmitRequest, "reqs", [["Edges"]], "requirements"),
    (p.SubmitRequest, "opts", [], "'opts'"),
    (p.StatusRequest, "ids", "a-1", "'ids'"),
    (p.StatusRequest, "ids", ["a-1", 2], "list of strings"),
    (p.StatusRequest, "ids", [b"a-1"], "list of strings"),
    (p.ResultRequest, "ids", [None], "list of strings"),
    (p.TerminateRequest, "ids", {"a-1": 1}, "'ids'"),
    (p.ProgressRequest, "id", 7, "'id'"),
    (p.ProgressRequest, "since", "3", "'since'"),
    (p.ProgressRequest, "since", 1.5, "'since'"),
    (p.ProgressRequest, "wait", "1", "'wait'"),
    (p.ProgressRequest, "with_result", 1, "'with_result'"),
    (p.ProgressRequest, "with_result", "yes", "'with_result'"),
    (p.CollectRequest, "watch", 1, "'watch'"),
    (p.CollectRequest, "add", "a-1", "'add'"),
    (p.CollectRequest, "add", [1], "list of strings"),
    (p.CollectRequest, "wait", None, "'wait'"),
    (p.CollectRequest, "max", 2.0, "'max'"),
    (p.StatsRequest, "rid", "1", "'rid'"),
    (p.ListJobsRequest, "status", "FAILED", "'status'"),
    (p.ListJobsRequest, "io", "Edges->Mesh2D", "'io'"),
    (p.ListJobsRequest, "io", ["Edges"], "io type"),
    (p.ListJobsRequest, "io", ["Edges", 2], "io type"),
    (p.ListJobsRequest, "limit", 2.0, "'limit'"),
    (p.Error, "code", 1, "'code'"),
    (p.Error, "message", None, "'message'"),
    (p.Error, "rid", "x", "'rid'"),
    (p.Register, "heartbeat", "1", "'heartbeat'"),
    (p.Register, "heartbeat", 0, "heartbeat interval"),
    (p.Register, "heartbeat", 0.0001, "heartbeat interval"),
    (p.Register, "heartbeat", 3601, "heartbeat interval"),
    (p.Register, "heartbeat", math.nan, "heartbeat"),
    (p.Register, "heartbeat", math.inf, "heartbeat"),
    (p.Register, "host", 1, "'host'"),
    (p.Register, "pid", "1", "'pid'"),
    (p.Register, "pid", 1.0, "'pid'"),
    (p.Register, "credit", "1", "'credit'"),
    (p.Register, "held", "a-1", "'held'"),
    (p.Register, "held", [1], "list of strings"),
    (p.Register, "reqs", None, "'reqs'"),
    (p.Report, "started", [1], "list of strings"),
    (p.Report, "started", "a-1", "'started'"),
    (p.Report, "progress", [["a-1", 50]], "[id, value, message]"),
    (p.Report, "progress", [("a-1", 50, "x", "y")], "[id, value, message]"),
    (p.Report, "progress", ["a-1"], "[id, value, message]"),
    (p.Report, "progress", [[1, 50, "x"]], "must be strings"),
    (p.Report, "progress", [["a-1", 50, None]], "must be strings"),
    (p.Report, "progress", [["a-1", "50", "x"]], "progress value"),
    (p.Report, "progress", {"a-1": 50}, "'progress'"),
    (p.Report, "results", "a-1", "'results'"),
    (p.Report, "results", ["a-1"], "[id, bin or nil"),
    (p.Report, "results", {"a-1": b"r"}, "'results'"),
    (p.Report, "failures", [["a-3", "why"]], "[id, reason, traceback]"),
    (p.Report, "failures", [["a-3", "why", None]], "[id, reason, traceback]"),
    (p.Report, "failures", "a-3", "'failures'"),
    (p.Report, "credit", "2", "'credit'"),
    (p.Report, "credit", 2.0, "'credit'"),
    (p.Jobs, "jobs", [["a-1", 0]], "[id, reqs index, contents"),
    (p.Jobs, "jobs", ["a-1"], "[id, reqs index, contents"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, {}, 1]], "[id, reqs index, contents"),
    (p.Jobs, "jobs", [["a-1", 0, [], {"files": []}, 1]], "fifth element must be a map"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, [{"parent": "m"}]]], "fifth element must be a map"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, {"parent": 1}]], "'parent'"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, {"protected": 0}]], "'protected'"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, {"protected": "no"}]], "'protected'"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, {"checkpoint": "text"}]], "checkpoint of a-1"),
    (p.Jobs, "jobs", [["a-1", 0, [], None, {"checkpoint": None}]], "fewer frames"),
    (p.Jobs, "jobs", [["a-1", 0, [], 1, {}]], "files must be a map"),
    (p.Jobs, "jobs", [[1, 0, [["data", b"x"]]]], "[id, reqs index, contents"),
    (p.Jobs, "jobs", [["a-1", 0, "data"]], "contents must be a list"),
    (p.Jobs, "jobs", [["a-1", 0, [["data", b"1"], ["data", b"2"]]]], "twice"),
    (p.Cancel, "ids", [1], "list of strings"),
    (p.Cancel, "reason", 1, "'reason'"),
    (p.Cancel, "reason", ["preempted"], "'reason'"),
    (p.ControlRequest, "id", 7, "'id'"),
    (p.ControlRequest, "id", None, "'id'"),
    (p.ControlRequest, "data", "text", "control message of a-1: content must be bin or nil"),
    (p.ControlRequest, "data", 5, "content must be bin or nil"),
    (p.ControlRequest, "rid", "17", "'rid'"),
    (p.Controls, "messages", "a-1", "'messages'"),
    (p.Controls, "messages", {"a-1": b"x"}, "'messages'"),
    (p.Controls, "messages", [["a-1", 1]], "[id, seq, bin or nil]"),
    (p.Controls, "messages", [["a-1", 1, b"x", b"y"]], "[id, seq, bin or nil]"),
    (p.Controls, "messages", [[1, 1, b"x"]], "[id, seq, bin or nil]"),
    (p.Controls, "messages", [["a-1", "1", b"x"]], "[id, seq, bin or nil]"),
    (p.Controls, "messages", [["a-1", 1.0, b"x"]], "[id, seq, bin or nil]"),
    (p.Controls, "messages", ["a-1"], "[id, seq, bin or nil]"),
    (p.Controls, "messages", [["a-1", 1, "text"]], "content must be bin or nil"),
    (p.Register, "slots", "2", "'slots'"),
    (p.Register, "slots", 2.0, "'slots'"),
    (p.Report, "stopped", "a-8", "'stopped'"),
    (p.Report, "stopped", [1], "list of strings"),
    (p.Report, "checkpoints", "a-1", "'checkpoints'"),
    (p.Report, "checkpoints", {"a-1": b"cp"}, "'checkpoints'"),
    (p.Report, "checkpoints", [["a-1"]], "[id, bin or nil]"),
    (p.Report, "checkpoints", [["a-1", b"x", b"y"]], "[id, bin or nil]"),
    (p.Report, "checkpoints", [[1, b"x"]], "[id, bin or nil]"),
    (p.Report, "checkpoints", [["a-1", "text"]], "checkpoint of a-1: content must be bin"),
    (p.Report, "used", [["a-1", 1]], "used"),
    (p.Heartbeat, "client", 1, "'client'"),
    (p.Heartbeat, "client", b"tcp://h:1", "'client'"),
    (p.Heartbeat, "usage", [1, 2], "usage"),
    (p.SubmitRequest, "opts", {"priority": "3"}, "'priority'"),
    (p.SubmitRequest, "opts", {"priority": 3.0}, "'priority'"),
    (p.SubmitRequest, "opts", {"priority": None}, "'priority'"),
    (p.SubmitRequest, "opts", {"protected": 0}, "'protected'"),
    (p.SubmitRequest, "opts", {"protected": "no"}, "'protected'"),
    (p.SubmitRequest, "opts", {"protected": None}, "'protected'"),
    (p.SubmitRequest, "opts", {"parent": 5}, "'parent'"),
    (p.SubmitRequest, "opts", {"parent": b"m-1"}, "'parent'"),
    (p.SubmitRequest, "opts", {"parent": None}, "'parent'"),
    (p.Shutdown, "reason", 1, "'reason'"),
    (p.Report, "seq", "7", "'seq'"),
    (p.Report, "seq", 7.0, "'seq'"),
    (p.Jobs, "ack", "6", "'ack'"),
    (p.Ack, "seq", None, "'seq'"),
    (p.Ack, "dropped", "a-1", "'dropped'"),
    (p.Ack, "dropped", [["a-1"]], "[id, why]"),
    (p.Ack, "dropped", [["a-1", 2]], "[id, why]"),
    (p.Ack, "dropped", ["a-1"], "[id, why]"),
]

# bool is an int to Python but not to msgpack: a peer that sends true for a count is broken.
BOOL_FOR_INT: list[tuple[type[p.Message], str]] = [
    (p.IoTypesRequest, "rid"),
    (p.StatusRequest, "rid"),
    (p.Reply, "rid"),
    (p.Error, "rid"),
    (p.ProgressRequest, "since"),
    (p.CollectRequest, "max"),
    (p.ListJobsRequest, "status"),
    (p.ListJobsRequest, "limit"),
    (p.Register, "pid"),
    (p.Register, "credit"),
    (p.Report, "credit"),
    (p.Report, "seq"),
    (p.Jobs, "ack"),
    (p.Ack, "seq"),
    (p.Register, "slots"),
    (p.ControlRequest, "rid"),
]

# values out of the documented range
OUT_OF_RANGE: list[tuple[type[p.Message], str, Any, str]] = [
    (p.Report, "progress", [["a-1", 101, "x"]], "progress value"),
    (p.Report, "progress", [["a-1", -1, "x"]], "progress value"),
    (p.Report, "progress", [["a-1", 50.5, "x"]], "progress value"),
    (p.Report, "progress", [["a-1", True, "x"]], "progress value"),
    (p.Report, "progress", [["a-1", 2**64 - 1, "x"]], "progress value"),
    (p.ListJobsRequest, "status", 0, "'status' must be a job status"),
    (p.ListJobsRequest, "status", 8, "'status' must be a job status"),
    (p.ListJobsRequest, "limit", 0, "'limit' must be >= 1"),
    (p.Register, "credit", -1, "credit must not be negative"),
    (p.Register, "credit", -(2**63), "credit must not be negative"),
    (p.Report, "credit", -1, "credit -1"),
    (p.Report, "credit", 1_000_001, "credit 1000001"),
    (p.Report, "seq", -1, "'seq' must be 0 to 2**63-1"),
    (p.Report, "seq", 2**63, "'seq' must be 0 to 2**63-1"),
    (p.Jobs, "ack", -1, "'ack' must be 0 to 2**63-1"),
    (p.Ack, "seq", -5, "'seq' must be 0 to 2**63-1"),
    (p.Register, "slots", 0, "slots 0 must be 1-1024"),
    (p.Register, "slots", -1, "slots -1 must be 1-1024"),
    (p.Register, "slots", p.MAX_SLOTS + 1, "slots 1025 must be 1-1024"),
    (p.SubmitRequest, "opts", {"priority": p.MAX_PRIORITY + 1}, "priority 1073741825"),
    (p.SubmitRequest, "opts", {"priority": -p.MAX_PRIORITY - 1}, "priority -1073741825"),
    (p.SubmitRequest, "opts", {"priority": 2**63}, "priority"),
]


def _break(cls: type[p.Message], key: str, value: Any) -> list[bytes]:
    """A sample's frames with one body field replaced. Its blob frames stay unless the field
    is the one whose nils refer to them (then no replacement value refers to any)."""
    msg = sample(cls)
    body = body_of(msg)
    body[key] = value
    blobs = [] if key in ("jobs", "results") else blobs_of(msg)
    return frames_of(msg.COMMAND.value, body, *blobs)


@pytest.mark.parametrize(
    ("cls", "key", "value", "words"),
    WRONG_TYPES + OUT_OF_RANGE,
    ids=lambda x: x.__name__ if isinstance(x, type) else (x if isinstance(x, str) else None),
)
def test_bad_field_value(cls: type[p.Message], key: str, value: Any, words: str) -> None:
    err = decode_error(_break(cls, key, value))
    assert err.code == "bad-message"
    assert words in str(err), str(err)


@pytest.mark.parametrize(("cls", "key"), BOOL_FOR_INT, ids=lambda x: getattr(x, "__name__", x))
def test_bool_where_an_int_is_expected(cls: type[p.Message], key: str) -> None:
    err = decode_error(_break(cls, key, True))
    assert f"{key!r}" in str(err) and "bool" in str(err)


@pytest.mark.parametrize(
    ("cls", "key"),
    [(p.Register, "heartbeat"), (p.ProgressRequest, "wait"), (p.CollectRequest, "wait")],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_bool_where_a_number_is_expected(cls: type[p.Message], key: str) -> None:
    decode_error(_break(cls, key, True))


@pytest.mark.parametrize("cls", [p.ProgressRequest, p.CollectRequest], ids=lambda c: c.__name__)
def test_nan_wait_is_refused(cls: type[p.Message]) -> None:
    err = decode_error(_break(cls, "wait", math.nan))
    assert "wait" in str(err)


@pytest.mark.parametrize("fmt", [[1], {"a": 1}, 5, None], ids=repr)
def test_content_format_must_be_a_string(fmt: Any) -> None:
    body = {"rid": 1, "reqs": [["Edges", "Mesh2D", "", None, b"", fmt]], "jobs": [["j", 0, []]]}
    decode_error(frames_of(b"submit", body))


def test_deeply_nested_tag_is_a_protocol_error() -> None:
    depth = 1000
    tag = b"\x91" * depth + b"\x90"
    body = b"\x82\xa3rid\x01\xa4reqs\x96\xa1a\xa1b\xa0" + tag + b"\xc4\x00\xa4USER"
    decode_error(frames_of(b"can_mesh", body, packed=True))


# ---------------------------------------------------------------------------- contents, results


def contents_frames(command: bytes, contents: Any, *blobs: Any) -> list[Any]:
    """A submit or jobs message with one job "j" whose contents are ``contents``."""
    body: dict[str, Any] = {"reqs": [PLAIN.to_wire()], "jobs": [["j", 0, contents]]}
    if command == b"submit":
        body["rid"] = 1
    return frames_of(command, body, *blobs)


def results_frames(results: Any, *blobs: Any) -> list[Any]:
    return frames_of(b"report", {"results": results}, *blobs)


NOT_A_SLOT = ["text", "", 0, 1, True, False, 1.5, [], [b"x"], {}, {"a": b"x"}]


@pytest.mark.parametrize("slot", NOT_A_SLOT, ids=repr)
@pytest.mark.parametrize("command", [b"submit", b"jobs"])
def test_content_slot_must_be_bin_or_nil(command: bytes, slot: Any) -> None:
    err = decode_error(contents_frames(command, [["data", slot]], b"x"))
    assert err.code == "bad-message"
    assert f"job j: content must be bin or nil, got {type(slot).__name__}" in str(err)


@pytest.mark.parametrize("slot", NOT_A_SLOT, ids=repr)
def test_result_slot_must_be_bin_or_nil(slot: Any) -> None:
    err = decode_error(results_frames([["a-1", slot]], b"x"))
    assert err.code == "bad-message"
    assert f"result of a-1: content must be bin or nil, got {type(slot).__name__}" in str(err)


NOT_A_PAIR = [
    "data",
    b"data",
    None,
    7,
    [],
    ["data"],
    ["data", b"x", b"y"],
    ["data", None, None],
    [1, b"x"],
    [None, None],
    [b"data", b"x"],
    [["data"], b"x"],
    {"data": b"x"},
]


@pytest.mark.parametrize("pair", NOT_A_PAIR, ids=repr)
@pytest.mark.parametrize("command", [b"submit", b"jobs"])
def test_content_must_be_a_key_and_slot_pair(command: bytes, pair: Any) -> None:
    err = decode_error(contents_frames(command, [pair], b"x"))
    assert err.code == "bad-message"
    assert "job j: each content must be [key, bin or nil]" in str(err)


NOT_A_RESULT = [
    *(x for x in NOT_A_PAIR if not (type(x) is list and len(x) == 3 and type(x[0]) is str)),
    [1, b"x", {"files": []}],
    ["a-1", b"x", {"files": []}, None],
]


@pytest.mark.parametrize("row", NOT_A_RESULT, ids=repr)
def test_result_must_be_an_id_and_slot_pair(row: Any) -> None:
    err = decode_error(results_frames([row], b"x"))
    assert err.code == "bad-message"
    assert "each result must be [id, bin or nil" in str(err)


@pytest.mark.parametrize(
    "contents",
    [
        [["data", b"1"], ["data", b"2"]],
        [["data", None], ["data", b"2"]],
        [["data", b"1"], ["other", b""], ["data", None]],
    ],
    ids=["inline", "framed", "apart"],
)
@pytest.mark.parametrize("command", [b"submit", b"jobs"])
def test_content_keys_must_be_distinct(command: bytes, contents: list[Any]) -> None:
    nils = sum(slot is None for _, slot in contents)
    err = decode_error(contents_frames(command, contents, *([b"x"] * nils)))
    assert "job j: a content key appears twice" in str(err)


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        ([*p.encode(sample(p.SubmitRequest))[:3], BIG], "job a-5: fewer frames"),
        (p.encode(sample(p.SubmitRequest))[:3], "job a-2: fewer frames"),
        (p.encode(sample(p.Jobs))[:3], "job a-2: fewer frames"),
        (p.encode(sample(p.Report))[:3], "result of a-2: fewer frames"),
        (contents_frames(b"submit", [["a", None], ["b", None]], b"x"), "job j: fewer frames"),
        (contents_frames(b"jobs", [["a", None]]), "job j: fewer frames"),
        (results_frames([["a-1", None], ["a-2", None], ["a-3", None]], b"x", b"y"), "a-3"),
    ],
    ids=["submit-one-short", "submit-none", "jobs-none", "report-none", "submit", "jobs", "report"],
)
def test_more_nils_than_frames(frames: list[Any], words: str) -> None:
    err = decode_error(frames)
    assert err.code == "bad-message"
    assert words in str(err) and "fewer frames than the body refers to" in str(err)


@pytest.mark.parametrize(
    "extra", [b"x", b"", zmq.Frame(b""), BIG], ids=["x", "empty", "frame", "big"]
)
@pytest.mark.parametrize(
    ("msg", "what"),
    [
        (sample(p.SubmitRequest), "submit"),
        (p.SubmitRequest(1, [p.SubmittedJob("j", PLAIN, ("data",), [b"inline"])]), "submit"),
        (p.SubmitRequest(1, []), "submit"),
        (sample(p.Jobs), "jobs"),
        (p.Jobs([]), "jobs"),
        (sample(p.Report), "report"),
        (p.Report(results=[("a-1", b"inline")]), "report"),
        (p.Report(), "report"),
    ],
    ids=[
        "submit",
        "submit-inline",
        "submit-empty",
        "jobs",
        "jobs-empty",
        "report",
        "report-inline",
        "report-empty",
    ],
)
def test_frames_left_over(msg: p.Message, what: str, extra: Any) -> None:
    err = decode_error([*p.encode(msg), extra])
    assert err.code == "bad-message"
    assert f"{what} carries more frames than its body refers to" in str(err)


def test_take_and_inline_are_inverses() -> None:
    frames: list[Any] = []
    values = [b"", b"small", sized(p.INLINE_MAX), sized(p.INLINE_MAX + 1), b"x", BIG]
    slots = [p.inline(v, frames) for v in values]
    assert slots == [b"", b"small", sized(p.INLINE_MAX), None, b"x", None]
    assert len(frames) == 2 and frames[0] is values[3] and frames[1] is values[5]
    it = iter(frames)
    back = [p.take(slot, it, "test") for slot in slots]
    assert back == values and back[3] is values[3] and back[5] is values[5]
    assert next(it, None) is None
    with pytest.raises(ProtocolError, match="what: fewer frames"):
        p.take(None, iter(()), "what")
    with pytest.raises(ProtocolError, match="what: content must be bin or nil, got str"):
        p.take("text", iter(()), "what")


# ---------------------------------------------------------------------------- file sets


def with_files(command: bytes, files: Any, *blobs: Any) -> list[Any]:
    """A submit or jobs message whose one job carries ``files``, or a report whose one result
    does, with ``blobs`` after the body."""
    if command == b"report":
        return results_frames([["a-1", b"r", files]], *blobs)
    body: dict[str, Any] = {"reqs": [PLAIN.to_wire()], "jobs": [["j", 0, [], files]]}
    if command == b"submit":
        body["rid"] = 1
    return frames_of(command, body, *blobs)


FILE_COMMANDS = [b"submit", b"jobs", b"report"]


@pytest.mark.parametrize("size", [0, p.INLINE_MAX, p.INLINE_MAX + 1], ids=str)
@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_file_data_travels_like_contents(command: bytes, size: int) -> None:
    data = sized(size)
    frames = as_received(with_files(command, {"files": [["/f", "rb", data]]}))
    if size > p.INLINE_MAX:
        frames = as_received(with_files(command, {"files": [["/f", "rb", None]]}, data))
    msg = p.decode(frames)
    (got,) = bulk_values(msg)[-1:]
    if size > p.INLINE_MAX:
        assert got is frames[3]
    else:
        assert type(got) is bytes and got == data
    again = p.encode(msg)
    assert len(again) == (4 if size > p.INLINE_MAX else 3), "and it goes out where it belongs"


def test_a_jobs_frames_are_its_contents_then_its_files() -> None:
    big = [sized(p.INLINE_MAX + 1 + i) for i in range(4)]
    files = p.FileSet([p.FileEntry("/a", "rb", big[1]), p.FileEntry("/b", "r")])
    msg = p.Jobs(
        [
            p.AssignedJob("j1", PLAIN, ("x",), [big[0]], files),
            p.AssignedJob(
                "j2", PLAIN, ("y",), [big[2]], p.FileSet([p.FileEntry("/c", "rb", big[3])])
            ),
        ]
    )
    frames = p.encode(msg)
    assert frames[3:] == big
    back = p.decode(as_received(frames))
    assert [bytes(v) for v in bulk_values(back)] == big


def test_path_of_4096_chars_is_accepted() -> None:
    path = "/" + "p" * 4095
    msg = p.decode(with_files(b"submit", {"files": [[path, "rb"]]}))
    assert norm(msg.jobs[0].files) == norm(p.FileSet([p.FileEntry(path, "rb")]))


# (nil files: see test_a_nil_file_set_is_refused_in_submit_and_report; a jobs row may say it)
BAD_FILE_SETS: list[tuple[Any, str]] = [
    ([], "files must be a map"),
    ("/in/x", "files must be a map"),
    ({}, "missing field 'files'"),
    ({"files": "/in/x"}, "'files'"),
    ({"files": ["/in/x"]}, "each file must be [path, mode]"),
    ({"files": [["/in/x"]]}, "each file must be [path, mode]"),
    ({"files": [["/in/x", "rb", b"", b""]]}, "each file must be [path, mode]"),
    ({"files": [[1, "rb"]]}, "each file must be [path, mode]"),
    ({"files": [[b"/in/x", "rb"]]}, "each file must be [path, mode]"),
    ({"files": [["", "rb"]]}, "bad file path"),
    ({"files": [["/in/\0x", "rb"]]}, "bad file path"),
    ({"files": [["/" + "p" * 4096, "rb"]]}, "bad file path"),
    ({"files": [["/in/x", "w"]]}, "file mode must be 'r' or 'rb'"),
    ({"files": [["/in/x", None]]}, "file mode must be 'r' or 'rb'"),
    ({"files": [["/in/x", "rb", "text"]]}, "content must be bin or nil, got str"),
    ({"files": [["/in/x", "rb", 1]]}, "content must be bin or nil, got int"),
    ({"files": [["/in/x", "rb", None]]}, "fewer frames than the body refers to"),
    ({"files": [], "args": "--fast"}, "'args'"),
    ({"files": [], "args": [1]}, "list of strings"),
    ({"files": [], "host": 1}, "'host'"),
]


@pytest.mark.parametrize(
    ("files", "words"), BAD_FILE_SETS, ids=lambda x: repr(x)[:40] if not isinstance(x, str) else x
)
@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_bad_file_set(command: bytes, files: Any, words: str) -> None:
    err = decode_error(with_files(command, files))
    assert err.code == "bad-message"
    assert words in str(err), str(err)
    if not words.startswith(("missing field", "'")) and words != "list of strings":
        # (a file set's own fields are reported like any body field, without the job)
        assert ("result of a-1" if command == b"report" else "job j") in str(err)


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_file_data_frames_are_counted_with_the_rest(command: bytes) -> None:
    files = {"files": [["/in/x", "rb", None]]}
    assert p.decode(with_files(command, files, b"x"))
    err = decode_error(with_files(command, files, b"x", b"y"))
    assert "carries more frames than its body refers to" in str(err)


# ---------------------------------------------------------------------------- submit and follow


@pytest.mark.parametrize("follow", [0, 2.5, 3600], ids=repr)
def test_submit_with_follow_round_trips(follow: float) -> None:
    msg = p.SubmitRequest(1, [p.SubmittedJob("j", PLAIN, ("data",), [b"x"])], {"follow": follow})
    back = p.decode(p.encode(msg))
    assert same(back, msg) and back.options["follow"] == follow


@pytest.mark.parametrize("count", [0, 2], ids=str)
def test_follow_needs_exactly_one_job(count: int) -> None:
    jobs = [p.SubmittedJob(f"j{i}", PLAIN) for i in range(count)]
    err = decode_error(p.encode(p.SubmitRequest(1, jobs, {"follow": 1.0})))
    assert "'follow' needs exactly one job" in str(err)


@pytest.mark.parametrize("follow", ["1", True, None, [], math.nan, math.inf, -1], ids=repr)
def test_follow_must_be_seconds(follow: Any) -> None:
    err = decode_error(
        p.encode(p.SubmitRequest(1, [p.SubmittedJob("j", PLAIN)], {"follow": follow}))
    )
    assert err.code == "bad-message"
    assert "'follow'" in str(err)


# ---------------------------------------------------------------------------- indexes


@pytest.mark.parametrize("index", [1, -1, 2**40, "0", None, True, 0.0], ids=repr)
@pytest.mark.parametrize("command", [b"submit", b"jobs"])
def test_requirements_index_out_of_range(command: bytes, index: Any) -> None:
    body: dict[str, Any] = {"rid": 1, "reqs": [PLAIN.to_wire()], "jobs": [["j", index, []]]}
    err = decode_error(frames_of(command, body))
    assert "requirements index" in str(err) and "out of range" in str(err)


def test_requirements_index_into_an_empty_table() -> None:
    err = decode_error(frames_of(b"submit", {"rid": 1, "reqs": [], "jobs": [["j", 0, []]]}))
    assert "out of range" in str(err)


def test_collect_max_is_at_least_one() -> None:
    msg = p.decode(frames_of(b"collect", {"rid": 1, "watch": "w", "max": -5}))
    assert msg.max == 1


# ---------------------------------------------------------------------------- request_id


@pytest.mark.parametrize(
    ("body", "rid"),
    [
        (p.pack({"rid": 42, "ids": "not a list"}), 42),
        (p.pack({"rid": "42"}), -1),
        (p.pack({"rid": True}), -1),
        (p.pack([1, 2]), -1),
        (b"\xc1", -1),
    ],
)
def test_request_id_is_best_effort(body: bytes, rid: int) -> None:
    assert p.request_id([p.VERSION, b"status", body]) == rid
    assert p.request_id([p.VERSION]) == -1


# ---------------------------------------------------------------------------- properties

if given is not None:
    INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    SCALAR = st.one_of(
        st.none(), st.booleans(), INT, st.floats(), st.text(max_size=8), st.binary(max_size=8)
    )
    FIELD_NAMES = sorted(
        {
            "rid",
            "reqs",
            "io",
            "jobs",
            "opts",
            "ids",
            "id",
            "since",
            "wait",
            "with_result",
            "watch",
            "add",
            "max",
            "data",
            "code",
            "message",
            "heartbeat",
            "host",
            "pid",
            "credit",
            "held",
            "started",
            "progress",
            "results",
            "failures",
            "reason",
            "slots",
            "stopped",
            "checkpoints",
            "used",
            "usage",
            "messages",
            "client",
            "seq",
            "ack",
        }
    )
    REQS = st.tuples(
        st.one_of(st.text(max_size=3), SCALAR),
        st.one_of(st.text(max_size=3), SCALAR),
        st.one_of(st.text(max_size=3), SCALAR),
        SCALAR,
        st.one_of(st.binary(max_size=3), SCALAR),
        st.one_of(st.sampled_from(["USER", "JSON"]), SCALAR),
    ).map(list)
    VALUE = st.recursive(
        st.one_of(SCALAR, REQS),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
        ),
        max_leaves=20,
    )
    BODY = st.dictionaries(st.sampled_from(FIELD_NAMES), VALUE, max_size=8)
    COMMANDS = st.sampled_from(sorted(c.value for c in p.Command))

    @st.composite
    def structured_frames(draw: Any) -> list[bytes]:
        body = draw(st.one_of(BODY, VALUE))
        blobs = draw(st.lists(st.binary(max_size=4), max_size=4))
        return [p.VERSION, draw(COMMANDS), p.pack(body), *blobs]

    RANDOM_FRAMES = st.lists(
        st.one_of(st.binary(max_size=12), st.just(p.VERSION), COMMANDS), max_size=6
    )

    def decode_or_protocol_error(frames: list[Any]) -> p.Message | None:
        try:
            msg = p.decode(frames)
        except ProtocolError as e:
            assert str(e)
            return None
        assert isinstance(msg, p.Message)
        return msg

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(RANDOM_FRAMES)
    def test_property_random_frames_decode_or_raise_protocol_error(frames: list[bytes]) -> None:
        decode_or_protocol_error(frames)

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(structured_frames())
    def test_property_plausible_bodies_decode_or_raise_protocol_error(frames: list[bytes]) -> None:
        decode_or_protocol_error(frames)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(SAMPLES), st.data())
    def test_property_any_single_field_swap_decodes_or_raises(msg: p.Message, data: Any) -> None:
        """Replace one field of a valid message with anything at all."""
        body = body_of(msg)
        key = data.draw(st.sampled_from(sorted(body) or ["rid"]))
        body[key] = data.draw(VALUE)
        decode_or_protocol_error(frames_of(msg.COMMAND.value, body, *blobs_of(msg)))

    # Bodies shaped like submit, jobs and report: mostly well-formed, with content and result
    # slots that are bin or nil, now and then anything at all at any level; and a blob count
    # that mostly matches the nils.
    def mostly(good: Any, bad: Any) -> Any:
        """``good`` about nine times in ten, else ``bad``."""
        return st.integers(min_value=0, max_value=9).flatmap(lambda i: bad if i == 9 else good)

    SLOT = mostly(st.one_of(st.binary(max_size=6), st.none()), SCALAR)
    PAIR = mostly(st.tuples(st.text(max_size=3), SLOT).map(list), VALUE)
    CONTENTS = mostly(st.lists(PAIR, max_size=4), VALUE)
    FILE_ENTRY = mostly(
        st.one_of(
            st.tuples(st.text(min_size=1, max_size=3), st.sampled_from(["r", "rb"])),
            st.tuples(st.text(min_size=1, max_size=3), st.sampled_from(["r", "rb"]), SLOT),
        ).map(list),
        VALUE,
    )
    FILE_SET = mostly(
        st.fixed_dictionaries(
            {"files": mostly(st.lists(FILE_ENTRY, max_size=3), VALUE)},
            optional={"args": st.lists(st.text(max_size=3), max_size=2), "host": st.text()},
        ),
        VALUE,
    )
    JOB_ENTRY = mostly(
        st.tuples(
            mostly(st.text(min_size=1, max_size=3), SCALAR),
            mostly(st.integers(min_value=0, max_value=1), st.integers(min_value=-1, max_value=3)),
            CONTENTS,
        ).map(list),
        VALUE,
    )
    JOB_ENTRY_WITH_FILES = st.tuples(JOB_ENTRY, st.booleans(), FILE_SET).map(
        lambda t: [*t[0], t[2]] if t[1] and type(t[0]) is list else t[0]
    )
    RESULT = st.tuples(PAIR, st.booleans(), FILE_SET).map(
        lambda t: [*t[0], t[2]] if t[1] and type(t[0]) is list else t[0]
    )
    #: a jobs row's fifth element: a checkpoint slot, a parent, protection
    EXTRA = mostly(
        st.fixed_dictionaries(
            {},
            optional={
                "checkpoint": SLOT,
                "parent": mostly(st.text(max_size=3), SCALAR),
                "protected": mostly(st.booleans(), SCALAR),
            },
        ),
        VALUE,
    )
    #: a jobs row, now and then with files (or nil) and an extra after them
    JOB_ROW = st.tuples(JOB_ENTRY_WITH_FILES, st.booleans(), st.one_of(st.none(), FILE_SET), EXTRA)
    JOB_ROW_WITH_EXTRA = JOB_ROW.map(
        lambda t: (
            [*t[0][:3], t[2], t[3]] if t[1] and type(t[0]) is list and len(t[0]) >= 3 else t[0]
        )
    )
    CHECKPOINTS = mostly(st.lists(PAIR, max_size=3), VALUE)

    def nils_in(body: dict[str, Any]) -> int:
        """How many frames a body refers to, if the rest of it is well-formed."""

        def slot_nil(x: Any, length: tuple[int, ...], at: int) -> bool:
            return type(x) is list and len(x) in length and x[at] is None

        def file_nils(fs: Any) -> int:
            entries = fs.get("files") if type(fs) is dict else None
            return sum(slot_nil(e, (3,), 2) for e in entries) if type(entries) is list else 0

        nils = 0
        if "results" in body:
            checkpoints = body.get("checkpoints")
            if type(checkpoints) is list:
                nils += sum(slot_nil(c, (2,), 1) for c in checkpoints)
            for r in body["results"]:
                nils += slot_nil(r, (2, 3), 1)
                if type(r) is list and len(r) == 3:
                    nils += file_nils(r[2])
            return nils
        for job in body["jobs"]:
            if type(job) is list and len(job) in (3, 4, 5):
                if type(job[2]) is list:
                    nils += sum(slot_nil(pair, (2,), 1) for pair in job[2])
                if len(job) >= 4:
                    nils += file_nils(job[3])
                extra = job[4] if len(job) == 5 else None
                if type(extra) is dict and "checkpoint" in extra and extra["checkpoint"] is None:
                    nils += 1
        return nils

    @st.composite
    def bulk_frames(draw: Any) -> tuple[list[Any], int]:
        command = draw(st.sampled_from([b"submit", b"jobs", b"report"]))
        body: dict[str, Any]
        if command == b"report":
            body = {"results": draw(st.lists(RESULT, max_size=5))}
            if draw(st.booleans()):
                body["checkpoints"] = draw(CHECKPOINTS)
        else:
            rows = JOB_ROW_WITH_EXTRA if command == b"jobs" else JOB_ENTRY_WITH_FILES
            body = {
                "reqs": [PLAIN.to_wire(), NAMED.to_wire()],
                "jobs": draw(st.lists(rows, max_size=3)),
            }
            if command == b"submit":
                body["rid"] = 1
        nils = nils_in(body)
        count = draw(st.one_of(st.just(nils), st.integers(min_value=0, max_value=5)))
        blobs = [zmq.Frame(b"blob-%d" % i) for i in range(count)]
        return [p.VERSION, command, p.pack(body), *blobs], nils

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bulk_frames())
    def test_property_bulk_bodies_take_every_frame_exactly_once(case: Any) -> None:
        """Whatever decodes took one frame per nil, in order, as the very frame objects, and
        left none; everything else is a ProtocolError."""
        frames, nils = case
        msg = decode_or_protocol_error(frames)
        if msg is None:
            return
        blobs = frames[3:]
        assert len(blobs) == nils
        taken = [v for v in bulk_values(msg) if isinstance(v, zmq.Frame)]
        assert len(taken) == len(blobs) and all(a is b for a, b in zip(taken, blobs, strict=True))
        assert all(type(v) is bytes for v in bulk_values(msg) if not isinstance(v, zmq.Frame))

    BOUNDARY = [sized(p.INLINE_MAX - 1), EXACT, BIG, sized(3 * p.INLINE_MAX)]
    BULK_VALUE = st.one_of(st.binary(max_size=8), st.sampled_from(BOUNDARY))
    REQS_VALUE = st.sampled_from([PLAIN, NAMED, OTHER])
    JOB_ID = st.text(min_size=1, max_size=12)

    @st.composite
    def keys_and_values(draw: Any) -> tuple[tuple[str, ...], list[bytes]]:
        keys = draw(st.lists(st.text(max_size=4), unique=True, max_size=4))
        values = draw(st.lists(BULK_VALUE, min_size=len(keys), max_size=len(keys)))
        return tuple(keys), values

    FILE_SETS = st.builds(
        p.FileSet,
        st.lists(
            st.builds(
                p.FileEntry,
                st.text(min_size=1, max_size=8).filter(lambda path: "\0" not in path),
                st.sampled_from(["r", "rb"]),
                st.one_of(st.none(), BULK_VALUE),
            ),
            max_size=3,
        ),
        st.lists(st.text(max_size=4), max_size=2),
        st.text(max_size=6),
    )

    @st.composite
    def bulk_messages(draw: Any) -> p.Message:
        kind = draw(st.sampled_from(BULK))
        if kind is p.Report:
            return p.Report(
                draw(st.lists(JOB_ID, max_size=2)),
                [],
                draw(
                    st.lists(
                        st.one_of(
                            st.tuples(JOB_ID, BULK_VALUE), st.tuples(JOB_ID, BULK_VALUE, FILE_SETS)
                        ),
                        max_size=5,
                    )
                ),
                [],
                draw(st.integers(min_value=0, max_value=10)),
                checkpoints=draw(st.lists(st.tuples(JOB_ID, BULK_VALUE), max_size=3)),
            )
        jobs: list[Any] = []
        for _ in range(draw(st.integers(min_value=0, max_value=4))):
            keys, values = draw(keys_and_values())
            args = (draw(JOB_ID), draw(REQS_VALUE), keys, values)
            files = draw(st.one_of(st.none(), FILE_SETS))
            if kind is p.SubmitRequest:
                jobs.append(p.SubmittedJob(*args, files))
                continue
            jobs.append(
                p.AssignedJob(
                    *args,
                    files,
                    checkpoint=draw(st.one_of(st.none(), BULK_VALUE)),
                    parent=draw(st.text(max_size=4)),
                    protected=draw(st.booleans()),
                )
            )
        if kind is p.SubmitRequest:
            return p.SubmitRequest(draw(st.integers(min_value=0, max_value=2**31)), jobs)
        return p.Jobs(jobs)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bulk_messages())
    def test_property_bulk_messages_round_trip_with_large_values_as_frames(
        msg: p.Message,
    ) -> None:
        values = bulk_values(msg)
        large = [v for v in values if len(v) > p.INLINE_MAX]
        frames = p.encode(msg)
        assert len(frames) == 3 + len(large)
        assert all(f is v for f, v in zip(frames[3:], large, strict=True)), "encode copies none"
        assert len(frames[2]) < sum(len(v) for v in values if len(v) <= p.INLINE_MAX) + 2000
        received = as_received(frames)
        back = p.decode(received)
        assert same(back, msg)
        got = [v for v in bulk_values(back) if len(v) > p.INLINE_MAX]
        assert all(g is f for g, f in zip(got, received[3:], strict=True)), "decode copies none"

    @settings(max_examples=200, deadline=None)
    @given(st.lists(BULK_VALUE, max_size=8))
    def test_property_take_undoes_inline(values: list[bytes]) -> None:
        frames: list[Any] = []
        slots = [p.inline(v, frames) for v in values]
        assert [s is None for s in slots] == [len(v) > p.INLINE_MAX for v in values]
        it = iter(frames)
        assert [p.take(s, it, "x") for s in slots] == values
        assert next(it, None) is None

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @example(
        [
            p.VERSION,
            b"submit",
            p.pack({"rid": 1, "reqs": [["a", "b", "", None, b"", [1]]], "jobs": [["j", 0, []]]}),
        ]
    )
    @example(
        [
            p.VERSION,
            b"submit",
            p.pack(
                {
                    "rid": 1,
                    "reqs": [PLAIN.to_wire()],
                    "jobs": [["j", 0, [["a", None], ["b", b"x"]]]],
                }
            ),
            b"small enough to go inline",
        ]
    )
    @example([p.VERSION, b"report", p.pack({"results": [["j", None]]}), BIG])
    @given(st.one_of(structured_frames(), bulk_frames().map(lambda case: case[0])))
    def test_property_what_decodes_encodes_back(frames: list[Any]) -> None:
        msg = decode_or_protocol_error(frames)
        if msg is not None:
            again = p.decode(p.encode(msg))
            assert type(again) is type(msg)
            assert p.encode(again) == p.encode(msg)

else:

    @pytest.mark.skip(reason="hypothesis is not installed: pip install hypothesis")
    def test_property_decoder() -> None:
        """Stands in for the property tests so their absence shows in the summary."""


# ---------------------------------------------------------------------------- acknowledged reports


def test_seq_and_ack_are_left_out_of_the_body_when_zero() -> None:
    assert "seq" not in body_of(p.Report(credit=1))
    assert body_of(p.Report(started=["a"], seq=3))["seq"] == 3
    assert "ack" not in body_of(p.Jobs([]))
    assert body_of(p.Jobs([], ack=9))["ack"] == 9
    assert body_of(p.Ack(4)) == {"seq": 4}


def test_a_report_without_seq_decodes_as_zero_and_jobs_without_ack_as_zero() -> None:
    report = p.decode(frames_of(b"report", {"credit": 2}))
    assert isinstance(report, p.Report) and report.seq == 0 and report.credit == 2
    jobs = p.decode(frames_of(b"jobs", {"reqs": [], "jobs": []}))
    assert isinstance(jobs, p.Jobs) and jobs.ack == 0
