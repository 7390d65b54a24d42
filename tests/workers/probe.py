#!/usr/bin/env python3
"""A stand-in worker executable for the factory tests; it never connects to anything.

It records what it was started with (argv, chosen environment variables, process group) as JSON
in the file named by PROBE_OUT, then behaves as PROBE_MODE says:

  exit         exit with PROBE_CODE (default 0)
  stderr       write PROBE_STDERR_BYTES of filler to stderr, then "LAST LINE", exit PROBE_CODE
  ignore-term  ignore SIGTERM and run until killed
  sleep        run until terminated
  until-file   exit 0 once the file PROBE_RELEASE exists
"""

import json
import os
import signal
import sys
import time

mode = os.environ.get("PROBE_MODE", "exit")
code = int(os.environ.get("PROBE_CODE", "0"))
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

out = os.environ.get("PROBE_OUT")
if out:
    keys = [k for k in os.environ.get("PROBE_ENV_KEYS", "").split(",") if k]
    record = {
        "argv": sys.argv,
        "env": {k: os.environ.get(k) for k in keys},
        "path0": os.environ.get("PATH", "").split(os.pathsep)[0],
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
    }
    with open(out + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(out + ".tmp", out)  # the test never sees half a file

if mode == "stderr":
    filler = int(os.environ.get("PROBE_STDERR_BYTES", "10000"))
    for _ in range(filler // 100):
        sys.stderr.write("filler " + "x" * 92 + "\n")
    sys.stderr.write("LAST LINE\n")
    sys.exit(code)
if mode in ("ignore-term", "sleep"):
    while True:
        time.sleep(0.05)
if mode == "until-file":
    release = os.environ["PROBE_RELEASE"]
    while not os.path.exists(release):
        time.sleep(0.02)
sys.exit(code)
