"""The sbatch script `v1fabrik slurm` writes: directives, the worker command, no secrets, valid bash."""
import os
import shlex
import stat
import subprocess

import pytest

from schemas.cli import main as cli, slurm


def directives(script):
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def srun_argv(script):
    (line,) = [line for line in script.splitlines() if line.startswith("srun ")]
    return shlex.split(line)[1:]


def fake_program(folder, name, body):
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_gpu_array_directives(tmp_path):
    job = slurm.WorkerArray(array=10, max_running=3, partition="gpu", account="lab", time="2-00:00:00",
                            mem="40G", cpus_per_task=6, workdir=str(tmp_path))
    lines = directives(slurm.render(job))
    for expected in ["--array=0-9%3", "--ntasks=1", "--gpus-per-task=1", "--cpus-per-task=6", "--mem=40G",
                     "--time=2-00:00:00", "--partition=gpu", "--account=lab", f"--chdir={tmp_path}",
                     f"--output={tmp_path}/slurm-logs/%x_%A_%a.out", "--requeue", "--signal=TERM@120"]:
        assert expected in lines


def test_worker_command_is_quoted_and_complete():
    job = slurm.WorkerArray(array=2, experiment="core 'size'; rm -rf ~", max_jobs=5, wait=True)
    assert srun_argv(slurm.render(job)) == [
        "v1fabrik", "worker", "--device", "cuda:0", "--experiment", "core 'size'; rm -rf ~", "--max-jobs", "5", "--wait"]


def test_cpu_workers_ask_for_no_gpu():
    script = slurm.render(slurm.WorkerArray(array=3, gpus_per_task=0))
    assert not any(line.startswith("--gpus") for line in directives(script))
    assert "--array=0-2" in directives(script)
    assert srun_argv(script) == ["v1fabrik", "worker", "--device", "cpu"]


def test_no_credentials_reach_the_script(monkeypatch, tmp_path):
    monkeypatch.setenv("DJ_USER", "alice")
    monkeypatch.setenv("DJ_PASS", "hunter2-secret")
    (tmp_path / "datajoint.json").write_text('{"database.password": "json-secret"}')
    script = slurm.render(slurm.WorkerArray(array=1, workdir=str(tmp_path), db_host="db.lab.org"))
    for secret in ("alice", "hunter2-secret", "json-secret"):
        assert secret not in script
    assert 'export DJ_HOST="${DJ_HOST:-db.lab.org}"' in script


def test_written_script_is_valid_bash_and_runs_the_worker(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_program(bin_dir, "srun", 'echo "srun got: $*"')
    job = slurm.WorkerArray(array=4, experiment="exp1", workdir=str(tmp_path), schema_prefix="lab_")
    path = slurm.write(job, tmp_path / "workers.sbatch")
    assert (tmp_path / "slurm-logs").is_dir()
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0

    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
    ran = subprocess.run(["bash", str(path)], env={**env, "DJ_HOST": "db.lab.org"}, cwd=tmp_path,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert "srun got: v1fabrik worker --device cuda:0 --experiment exp1" in ran.stdout

    unconfigured = subprocess.run(["bash", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert unconfigured.returncode == 2
    assert "no database configured" in unconfigured.stderr


def test_cli_dry_run_prints_the_script_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["slurm", "--array", "8", "--experiment", "seeds", "--partition", "a100", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("#!/bin/bash\n")
    assert "--array=0-7" in directives(printed) and "--partition=a100" in directives(printed)
    assert srun_argv(printed)[:6] == ["v1fabrik", "worker", "--device", "cuda:0", "--experiment", "seeds"]
    assert list(tmp_path.iterdir()) == []


def test_submit_without_sbatch_writes_the_script_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["slurm", "--array", "2", "--script", "w.sbatch"]) == 1
    assert "sbatch is not on this machine's PATH: w.sbatch is written" in capsys.readouterr().err
    assert (tmp_path / "w.sbatch").read_text().startswith("#!/bin/bash\n")


def test_submit_hands_the_script_to_sbatch_and_returns_the_job_id(tmp_path, monkeypatch):
    record = tmp_path / "sbatch-args"
    fake_program(tmp_path, "sbatch", f'echo "$*" > {record}; echo "4242;cluster"')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    path = slurm.write(slurm.WorkerArray(array=1, workdir=str(tmp_path)), tmp_path / "w.sbatch")
    assert slurm.submit(path) == "4242"
    assert record.read_text().split() == ["--parsable", str(path)]

    fake_program(tmp_path, "sbatch", 'echo "sbatch: error: invalid partition" >&2; exit 1')
    with pytest.raises(slurm.SlurmError, match="sbatch refused .*invalid partition"):
        slurm.submit(path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"array": 0}, "array must be a positive integer"),
        ({"gpus_per_task": 2}, "scale out with --array"),
        ({"time": "1 day"}, "time '1 day' is not valid"),
        ({"mem": "lots"}, "mem 'lots' is not valid"),
        ({"partition": "gpu\n#SBATCH --uid=0"}, "partition .* is not valid"),
        ({"modules": ("cuda; curl x",)}, "module .* is not valid"),
        ({"schema_prefix": "lab-"}, "schema_prefix 'lab-' is not valid"),
        ({"workdir": "/data/my lab"}, "contains whitespace"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(options, message):
    with pytest.raises(ValueError, match=message):
        slurm.WorkerArray(**{"array": 1, **options})
