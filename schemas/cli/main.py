"""The ``v1fabrik`` command line: parses arguments and calls the layer below, nothing more.

To add a command, write a function ``(subparsers)`` that adds a subparser and sets ``run`` to a
function ``(args) -> exit code``, and list it in ``COMMANDS``: the database commands are in
:mod:`.db`, Slurm in :mod:`.slurm`, the pipeline's in :mod:`.commands`.
"""
import argparse
import logging
import sys

from ..server.local import ServerError
from . import commands, dashboard, db, search, slurm, submissions

COMMANDS = [db.add_command, slurm.add_command, dashboard.add_command, *commands.COMMANDS, *search.COMMANDS,
            *submissions.COMMANDS]

# Errors meant for people: printed as one line (with --debug, as a traceback).
USER_ERRORS = (ValueError, TypeError, OSError, ServerError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v1fabrik", description="Models of mouse V1 trained and scored through DataJoint.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"v1fabrik: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
