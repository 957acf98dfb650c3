"""The ``v1fabrik`` command line: parses arguments and calls the layer below, nothing more.

To add a command, write ``_add_<name>(commands)`` that adds a subparser and sets ``run`` to a
function ``(args) -> exit code``, and list it in ``COMMANDS``.
"""
import argparse
import logging
import os
import sys

from . import dbserver, pipeline_commands, slurm

logger = logging.getLogger(__name__)


def _add_db(commands):
    db = commands.add_parser("db", help="the private local database server")
    actions = db.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start it (idempotent) and write datajoint.json + .secrets/ here")
    up.add_argument("--backend", choices=dbserver.BACKENDS, default="mariadb")
    up.set_defaults(run=_db_up)
    for name, run, text in [("status", _db_status, "report it"), ("down", _db_down, "stop it")]:
        action = actions.add_parser(name, help=text)
        action.add_argument("--backend", choices=dbserver.BACKENDS, help="default: every backend")
        action.set_defaults(run=run)


def _db_up(args) -> int:
    if os.environ.get("DJ_HOST"):
        logger.info("DJ_HOST=%s is set: using that server and starting nothing.", os.environ["DJ_HOST"])
        return 0
    dbserver.up(dbserver.server(args.backend))
    return 0


def _db_status(args) -> int:
    """Exit code 0 when a server is running (or DJ_HOST answers), 3 when none is."""
    if os.environ.get("DJ_HOST"):
        from .connection import reachable, settings

        target = settings()
        up = reachable(target["host"], target["port"])
        print(f"DJ_HOST server {target['host']}:{target['port']}: {'reachable' if up else 'NOT reachable'}")
        return 0 if up else 3
    running = False
    for backend in [args.backend] if args.backend else dbserver.BACKENDS:
        srv = dbserver.server(backend)
        info = dbserver.status(srv)
        if info:
            running = True
            print(f"{backend}: running, pid {info['pid']}, {info['host']}:{info['port']}, "
                  f"user {info['user']}, data in {info['folder']}")
        elif args.backend or srv.folder.exists():
            print(f"{backend}: not running ({srv.folder})")
    if not running and not args.backend:
        print("no local database server is running: start one with `v1fabrik db up`")
    return 0 if running else 3


def _db_down(args) -> int:
    for backend in [args.backend] if args.backend else dbserver.BACKENDS:
        if not dbserver.down(dbserver.server(backend)) and args.backend:
            logger.info("The %s server was not running.", backend)
    return 0


def _add_synth(commands):
    synth = commands.add_parser("synth", help="write a synthetic V1 dataset in the SENSORIUM file layout")
    synth.add_argument("out", help="folder to create")
    synth.add_argument("--preset", default="default", help="size preset (pipeline.datasets.synthetic.PRESETS)")
    for flag, name in [("--neurons", "n_neurons"), ("--train", "n_train"), ("--validation", "n_validation"),
                       ("--test-images", "n_test_images"), ("--repeats", "n_repeats"), ("--seed", "seed")]:
        synth.add_argument(flag, dest=name, type=int)
    synth.add_argument("--image-size", dest="image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"))
    synth.set_defaults(run=_synth)


def _synth(args) -> int:
    from pipeline.datasets import synthetic

    if args.preset not in synthetic.PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {', '.join(synthetic.PRESETS)}")
    options = dict(synthetic.PRESETS[args.preset])
    names = ["n_neurons", "n_train", "n_validation", "n_test_images", "n_repeats", "seed", "image_size"]
    options.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    if "image_size" in options:
        options["image_size"] = tuple(options["image_size"])
    synthetic.generate(args.out, **options)
    return 0


COMMANDS = [_add_db, _add_synth, slurm.add_command, *pipeline_commands.COMMANDS]

# Errors meant for people: printed as one line (with --debug, as a traceback).
USER_ERRORS = (ValueError, TypeError, OSError, dbserver.ServerError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v1fabrik", description="Models of mouse V1 trained and scored through DataJoint.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
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
