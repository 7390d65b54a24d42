"""Run the throughput regression suite and print one table (``python -m perf --help``).

Each benchmark measures remus and its reference in the same run, as separate processes on
loopback, after a warm-up, several times; the table shows medians with [min-max], the ratio
remus/reference, and the goal from issue 6.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python perf/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import remus_bench
from perf.cases import CASES, Options
from perf.harness import Row, machine, render, to_json
from perf.procs import install_sigterm_exit

MIB = 1 << 20


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short form, under a minute")
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=[],
        help=f"run only these benchmarks (repeatable or comma-separated): {', '.join(CASES)}",
    )
    p.add_argument("--jobs", type=int, help="pipelined jobs per sample")
    p.add_argument("--repeat", type=int, help="timed samples per benchmark side")
    p.add_argument("--warmup", type=int, help="untimed rounds before the samples")
    p.add_argument("--bulk-mib", type=int, help="bulk payload in MiB (default 256)")
    p.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log failures with tracebacks")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    overrides = {
        k: v
        for k, v in (("jobs", args.jobs), ("repeat", args.repeat), ("warmup", args.warmup))
        if v is not None
    }
    if args.repeat is not None:
        overrides["bulk_repeat"] = args.repeat
    if args.bulk_mib is not None:
        overrides["bulk_size"] = args.bulk_mib * MIB
    return Options.quick(**overrides) if args.quick else Options(**overrides)


def selected(only: list[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(CASES)}")
    return names or list(CASES)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    install_sigterm_exit()  # so every child process is stopped on the way out
    opts = options(args)
    names = selected(args.only)
    why = remus_bench.available()
    notes = [] if why is None else [f"remus not available: {why}"]
    if why is not None:
        print(f"remus not available: {why}; measuring the references only", file=sys.stderr)
    rows: list[Row] = []
    started = time.monotonic()
    for name in names:
        t0 = time.monotonic()
        print(f"running {name} ...", end=" ", file=sys.stderr, flush=True)
        rows += CASES[name](opts, why)
        print(f"{time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    m = machine()
    elapsed = time.monotonic() - started
    print(
        f"remus perf {'(quick) ' * args.quick}{m['date']} on {m['host']}: {m['cpus']} cpus, "
        f"python {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}; {elapsed:.0f}s\n"
    )
    print(render(rows, notes), flush=True)
    if args.json:
        data = to_json(rows, options=dataclasses.asdict(opts), notes=notes, seconds=elapsed)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
