"""benchmarks/bench_gpu.py runs end to end on the CPU (``--device cpu --quick``) and writes its report."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_cpu_run_writes_both_parts_of_the_report(tmp_path):
    out = tmp_path / "gpu.md"
    subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--quick", "--out", str(out)],
                   cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True, capture_output=True,
                   timeout=600)
    report = out.read_text()
    record = json.loads(out.with_suffix(".json").read_text())
    assert "## Part 1: one job" in report and "## Part 2: several jobs on one device (ours)" in report
    single = {(r["resolution"], r["numerics"], r["model"]) for r in record["single"]}
    for resolution in ("36x64", "18x32"):
        for numerics in ("fp32", "tf32", "bf16 autocast"):
            for model in ("reference (neuralpredictors 0.3.0)", "ours"):
                assert (resolution, numerics, model) in single
    assert not [r for r in record["single"] if "error" in r]
    assert all(r["images_per_s"] > 0 and r["peak_gib"] is None for r in record["single"])
    assert [(r["workers"], r["numerics"]) for r in record["concurrent"]] == [(1, "fp32"), (2, "fp32")]
    assert "| 36x64, 4 | bf16 autocast | ours, channels-last |" in report
    assert "| 2 | fp32 | 36x64, 4 |" in report
