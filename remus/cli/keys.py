"""``remus keys new NAME`` and ``remus keys show FILE``: the CURVE key pairs of secure mode.

::

    $ remus keys new alice --dir keys
    public key:  keys/alice.key
    secret key:  keys/alice.key_secret (readable by you only)
    alice: rq:rM>}U?@Lns47E1%kR.o@n%FA({1wsn5Ox0Xh[
    keys/alice.key is public: for a client or worker, copy it into ... Keep keys/alice.key_secret

A broker's own pair is made the same way: ``remus server --secret-key broker.key_secret``, and
its clients and workers get ``broker.key`` (or the Z85 text ``remus keys show`` prints) as their
``--server-key``. Nothing here prints a secret key.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from remus.cli import common as c


def add_parser(sub: Any) -> None:
    k = sub.add_parser(
        "keys",
        help="make or show CURVE keys for secure mode",
        description="Make a CURVE key pair (NAME.key, public; NAME.key_secret, readable by its "
        "owner only) or show the public key in a key file. A broker lets in the keys whose "
        ".key files are in its --allow-clients, --admin-clients or --allow-workers folder.",
    )
    what = k.add_subparsers(dest="keys_command", required=True, metavar="new|show")
    new = what.add_parser(
        "new",
        help="make NAME.key and NAME.key_secret",
        description="Write a new key pair: NAME.key (the public key: copy it into the broker's "
        "allow-list folder, or give a broker's to its clients as --server-key) and "
        "NAME.key_secret (the secret key: --key, --secret-key; it never leaves its owner).",
    )
    new.add_argument("name", metavar="NAME", help="the pair's name, e.g. alice, worker1, broker")
    new.add_argument(
        "--dir", default=".", metavar="DIR", help="the folder to write them in (made if missing)"
    )
    new.add_argument("--force", action="store_true", help="replace a pair of that name that exists")
    new.set_defaults(run=run_new)
    show = what.add_parser(
        "show",
        help="print the public key in a key file",
        description="Print the public key (40 characters of Z85 text) in a .key or .key_secret "
        "file: what --server-key takes for a broker. The secret key is never printed.",
    )
    show.add_argument("file", metavar="FILE", help="a NAME.key or NAME.key_secret file")
    show.set_defaults(run=run_show)


def run_new(args: argparse.Namespace) -> int:
    from remus.security import new_keys, public_key_of

    try:
        public, secret = new_keys(args.name, args.dir, force=args.force)
    except OSError as e:
        raise c.CliError(f"cannot write keys in {args.dir}: {e.strerror or e}", c.USAGE) from None
    print(f"public key:  {public}")
    print(f"secret key:  {secret} (readable by you only)")
    print(f"{args.name}: {public_key_of(public).decode()}")
    print(
        f"{public} is public: for a client or worker, copy it into the broker's allow-list "
        "folder (--allow-clients, --admin-clients or --allow-workers); for a broker, give it to "
        f"its clients and workers (--server-key). Keep {secret} private: whoever holds it is "
        f"{args.name}",
        flush=True,
    )
    return c.OK


def run_show(args: argparse.Namespace) -> int:
    from remus.security import public_key_of

    if not os.path.isfile(args.file):
        raise c.CliError(
            f"{args.file}: no such file; give a NAME.key or NAME.key_secret file (`remus keys "
            "new NAME` writes them)",
            c.USAGE,
        )
    print(public_key_of(args.file).decode(), flush=True)  # ConfigError: exit 2
    return c.OK
