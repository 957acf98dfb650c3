"""v1fabrik: SENSORIUM baseline models of mouse V1, trained and scored through DataJoint 2."""
import os
import re

from setuptools import find_packages, setup

VERSION = "0.1.0"


def build_version() -> str:
    """``VERSION`` with ``+g<commit>[.dirty]`` or ``+unknown`` from V1FABRIK_BUILD_COMMIT (set by docker/Dockerfile)."""
    commit = os.environ.get("V1FABRIK_BUILD_COMMIT", "")
    if not commit:
        return VERSION
    if commit == "unknown":
        return f"{VERSION}+unknown"
    if not re.fullmatch(r"[0-9a-f]{7,40}(\.dirty)?", commit):
        raise SystemExit(f"V1FABRIK_BUILD_COMMIT={commit!r} is not a git commit: use $(git rev-parse --short=12 HEAD), "
                         "optionally with .dirty, or unknown")
    return f"{VERSION}+g{commit}"


setup(
    name="v1fabrik",
    version=build_version(),
    description="Predictive models of mouse visual cortex on a shared DataJoint 2 database",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "schemas", "schemas.*"]),
    # cpu_kernels.cpp: the fused CPU kernels' source, compiled on first use (pipeline/models/cpu_kernels.py)
    package_data={"schemas.cli.dashboard": ["templates/*.html"], "pipeline.models": ["cpu_kernels.cpp"]},
    install_requires=[
        # 2.13.0 is the CPU wheel on this machine's disk; GPU images install their own CUDA build.
        "torch>=2.6,<2.15",
        "datajoint>=2.3,<2.4",
        "numpy>=1.24",
        "pandas>=2.0",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        # torch builds the fused CPU kernels (pipeline/models/cpu_kernels.py) with ninja
        "ninja>=1.11",
        "matplotlib>=3.7",
        # hyper-parameter search (schemas/jobs/search): the study lives in the tables' database server
        "optuna>=5.0,<6",
        # the read-only web dashboard (schemas/cli/dashboard)
        "starlette>=0.40",
        "uvicorn>=0.30",
        "plotly>=5.20",
        "jinja2>=3.1",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6.0",
            # The reference implementation we compare against (imported behind shims in tests/reference.py).
            "neuralpredictors==0.3.0",
            "scikit-image>=0.19.1",
            "scipy>=1.9",
            "h5py>=3.0",
            "nbclient>=0.7",
            "nbformat>=5.0",
            "ipykernel>=6.0",
            # the dashboard's browser test drives Debian's chromium + chromium-driver (apt)
            "selenium>=4.20",
        ],
        "postgres": ["psycopg2-binary>=2.9"],
    },
    entry_points={"console_scripts": ["v1fabrik=schemas.cli.main:main"]},
)
