"""Slurm job arrays of v1fabrik workers: render the sbatch script, write it, submit it.

Each array task runs one ``v1fabrik worker`` on one GPU against the lab database; the workers
share the database's job queue, so ``--array 10`` trains up to ten models at a time.

Preemption and time limits: the script asks Slurm for ``--requeue`` and ``--signal=TERM@<grace>``,
so the worker gets SIGTERM ``grace`` seconds before its time limit (preemption sends SIGTERM too)
and the array task is requeued when preempted. The worker finishes its epoch, writes the
checkpoint and puts the job back to ``pending`` (:mod:`schemas.jobs.preemption`), so the next worker
resumes it from that epoch.

Credentials never enter the script. DataJoint reads ``DJ_HOST``/``DJ_USER``/``DJ_PASS`` from the
job's environment (sbatch passes on the submitting shell's), else ``datajoint.json`` and
``.secrets/`` in the work folder.
"""
import argparse
import logging
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

logger = logging.getLogger(__name__)

_TIME = re.compile(r"\d+(-\d+)?(:\d+){0,2}")  # minutes, h:m:s, d-h, d-h:m:s ... (sbatch --time)
_MEM = re.compile(r"\d+[KMGT]?")
_WORD = re.compile(r"[\w.+-]+(,[\w.+-]+)*")  # partition(s), account, job name, module, host
_PREFIX = re.compile(r"\w+")


class SlurmError(OSError):
    """sbatch is missing or refused the script."""


@dataclass(frozen=True)
class WorkerArray:
    """What to ask Slurm for; see ``add_command`` for the meaning of each field."""

    array: int
    gpus_per_task: int = 1
    experiment: str | None = None
    max_jobs: int | None = None
    max_running: int | None = None
    wait: bool = False
    partition: str | None = None
    account: str | None = None
    time: str = "24:00:00"
    mem: str = "32G"
    cpus_per_task: int = 4
    job_name: str = "v1fabrik"
    workdir: str = "."
    activate: str | None = None
    modules: tuple = ()
    db_host: str | None = None
    schema_prefix: str | None = None
    grace: int = 120

    def __post_init__(self):
        for name in ("array", "cpus_per_task", "max_jobs", "max_running", "grace"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.gpus_per_task not in (0, 1):
            raise ValueError(f"gpus_per_task must be 0 (CPU worker) or 1, got {self.gpus_per_task!r}: "
                             "a worker trains on one GPU, so scale out with --array instead")
        _check("time", self.time, _TIME, "like 24:00:00 or 2-00:00:00")
        _check("mem", self.mem, _MEM, "like 32G or 16000M")
        for name in ("partition", "account", "job_name", "db_host"):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), _WORD, "letters, digits and . _ + - only")
        for module in self.modules:
            _check("module", module, re.compile(r"[\w./+-]+"), "letters, digits and . _ / + - only")
        if self.schema_prefix is not None:
            _check("schema_prefix", self.schema_prefix, _PREFIX, "letters, digits and _ only")
        if re.search(r"\s", str(Path(self.workdir).resolve())):
            raise ValueError(f"workdir {self.workdir!r} contains whitespace, which #SBATCH lines cannot hold")


def _check(name, value, pattern, hint):
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name} {value!r} is not valid: {hint}")


def worker_command(job: WorkerArray) -> list:
    """The ``v1fabrik worker`` argv each array task runs."""
    command = ["v1fabrik", "worker", "--device", "cuda:0" if job.gpus_per_task else "cpu"]
    if job.experiment:
        command += ["--experiment", job.experiment]
    if job.max_jobs:
        command += ["--max-jobs", str(job.max_jobs)]
    if job.wait:
        command.append("--wait")
    return command


def render(job: WorkerArray) -> str:
    """The sbatch script for ``job``, with no credentials in it."""
    workdir = Path(job.workdir).resolve()
    array = f"0-{job.array - 1}" + (f"%{job.max_running}" if job.max_running else "")
    gpus = [f"--gpus-per-task={job.gpus_per_task}"] if job.gpus_per_task else []
    directives = [
        f"--job-name={job.job_name}",
        f"--array={array}",
        "--ntasks=1",
        *gpus,
        f"--cpus-per-task={job.cpus_per_task}",
        f"--mem={job.mem}",
        f"--time={job.time}",
        f"--chdir={workdir}",
        f"--output={workdir / 'slurm-logs'}/%x_%A_%a.out",
        "--open-mode=append",  # a requeued task appends to its log
        "--requeue",
        f"--signal=TERM@{job.grace}",
    ]
    directives += [f"--{name}={getattr(job, name)}" for name in ("partition", "account") if getattr(job, name)]

    lines = [
        "#!/bin/bash",
        f"# {job.array} v1fabrik worker(s) as a Slurm job array, written by `v1fabrik slurm` on "
        f"{datetime.now():%Y-%m-%d %H:%M}.",
        "# Credentials are not in this file: DataJoint reads DJ_USER/DJ_PASS from the job's environment",
        "# (sbatch passes on the submitting shell's), else datajoint.json and .secrets/ in the work folder.",
        *(f"#SBATCH {d}" for d in directives),
        "set -euo pipefail",
        "",
        *(f"module load {m}" for m in job.modules),
    ]
    if job.activate:
        lines.append(f"source {shlex.quote(str(Path(job.activate).resolve() / 'bin' / 'activate'))}")
    if job.db_host:
        lines.append(f'export DJ_HOST="${{DJ_HOST:-{job.db_host}}}"')
    if job.schema_prefix:
        lines.append(f'export V1FABRIK_SCHEMA_PREFIX="${{V1FABRIK_SCHEMA_PREFIX:-{job.schema_prefix}}}"')
    lines += [
        'if [[ -z "${DJ_HOST:-}" && ! -f datajoint.json ]]; then',
        '    echo "v1fabrik: no database configured: set DJ_HOST (and DJ_USER, DJ_PASS) or put datajoint.json'
        f' in {workdir}" >&2',
        "    exit 2",
        "fi",
        'echo "v1fabrik worker ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname),'
        ' GPUs ${CUDA_VISIBLE_DEVICES:-none}"',
        "srun " + shlex.join(worker_command(job)),
    ]
    return "\n".join(lines) + "\n"


def write(job: WorkerArray, path) -> Path:
    """Write the script to ``path`` and create the log folder Slurm writes into; returns the path."""
    path = Path(path)
    path.write_text(render(job))
    (Path(job.workdir).resolve() / "slurm-logs").mkdir(parents=True, exist_ok=True)
    return path


def submit(path) -> str:
    """Submit the script with sbatch; returns the Slurm job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError(f"sbatch is not on this machine's PATH: {path} is written; "
                         f"submit it from a Slurm login node with `sbatch {path}`")
    done = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused {path}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


def add_command(commands):
    """Add ``v1fabrik slurm`` to the CLI's subcommands."""
    parser = commands.add_parser(
        "slurm", help="write and submit an sbatch script for an array of workers",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--array", type=int, required=True, metavar="N", help="number of workers (array tasks)")
    add("--gpus-per-task", type=int, default=1, choices=(0, 1), help="0 runs CPU workers")
    add("--experiment", help="only train this experiment's models")
    add("--max-jobs", type=int, metavar="N", help="each worker stops after N jobs")
    add("--max-running", type=int, metavar="K", help="at most K array tasks run at once (array throttle)")
    add("--wait", action="store_true", help="workers wait for new jobs instead of exiting when none are left")
    add("--partition")
    add("--account")
    add("--time", default=WorkerArray.time, help="time limit per worker")
    add("--mem", default=WorkerArray.mem, help="memory per worker")
    add("--cpus-per-task", type=int, default=WorkerArray.cpus_per_task, help="CPUs per worker (data loading)")
    add("--job-name", default=WorkerArray.job_name)
    add("--workdir", default=".", help="folder the workers run in (datajoint.json, .secrets/, slurm-logs/)")
    add("--activate", default=_current_env(), help="virtual or conda environment to activate on the node")
    add("--module", dest="modules", action="append", default=[], help="environment module to load (repeatable)")
    add("--db-host", help="database host, used when DJ_HOST is not set in the job's environment")
    add("--schema-prefix", help="schema prefix, used when V1FABRIK_SCHEMA_PREFIX is not set on the node")
    add("--grace", type=int, default=WorkerArray.grace, help="seconds of SIGTERM warning before the time limit")
    add("--script", default="v1fabrik_workers.sbatch", help="where to write the script")
    add("--dry-run", action="store_true", help="print the script; write and submit nothing")
    parser.set_defaults(run=_run)


def _current_env():
    """This interpreter's virtual environment, if it runs in one."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


def _run(args) -> int:
    options = {f.name: getattr(args, f.name) for f in fields(WorkerArray)}
    job = WorkerArray(**{**options, "modules": tuple(args.modules)})
    if args.dry_run:
        print(render(job), end="")
        return 0
    path = write(job, args.script)
    logger.info("Wrote %s", path)
    logger.info("Submitted Slurm job %s", submit(path))
    return 0
