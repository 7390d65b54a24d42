#!/usr/bin/env python3
"""A remus worker: a summary of any input (Text -> Summary).

The broker starts it from summarize.rw as ``summarize.py <worker endpoint> --top-words 5``.
The result is JSON: size, line and word counts, the most frequent words, and the SHA-256.
"""

import argparse
import codecs
import collections
import hashlib
import json
import re

from remus import IOType, JobRequirements
from remus.worker import Worker

# what this worker serves: must agree with summarize.rw
REQUIREMENTS = JobRequirements(IOType("Text", "Summary"), worker_name="Summarizer")
WORD = re.compile(r"[^\W\d_]{3,}")  # words of three letters or more
PARTIAL_WORD = re.compile(r"[^\W\d_]*\Z")  # letters at the end of a chunk may go on in the next


def summarize(data: bytes, top: int, report=lambda done, total: None) -> dict:
    """Read the data in about 20 chunks, reporting after each, so progress is real."""
    sha, words = hashlib.sha256(), collections.Counter()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = total_words = 0
    carry = ""  # a word cut in two by the chunk boundary
    chunk = max(64 * 1024, len(data) // 20)
    for start in range(0, len(data), chunk):
        part = data[start : start + chunk]
        sha.update(part)
        lines += part.count(b"\n")
        last = start + chunk >= len(data)
        text = carry + decoder.decode(part, final=last)
        keep = len(text) if last else PARTIAL_WORD.search(text).start()
        text, carry = text[:keep], text[keep:]
        found = [w.lower() for w in WORD.findall(text)]
        total_words += len(found)
        words.update(found)
        report(min(start + chunk, len(data)), len(data))
    return {
        "bytes": len(data),
        "lines": lines + (1 if data and not data.endswith(b"\n") else 0),
        "words": total_words,
        "top_words": words.most_common(top),
        "binary": b"\0" in data,
        "sha256": sha.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("endpoint", help="the broker's worker endpoint, e.g. tcp://127.0.0.1:50510")
    parser.add_argument("--top-words", type=int, default=5)
    args = parser.parse_args()

    with Worker(REQUIREMENTS, endpoint=args.endpoint) as w:

        def handle(job):
            def report(done, total):
                w.send_progress(job, 100 * done // total, f"read {done}/{total} bytes")
                if w.job_should_be_terminated(job):
                    raise RuntimeError("terminated at the client's request")

            summary = summarize(job["data"], args.top_words, report)
            return json.dumps(summary, indent=2).encode()

        w.run(handle, idle_timeout=10)  # then exit; the broker starts another when needed


if __name__ == "__main__":
    main()
