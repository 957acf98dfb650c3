"""Reading and validating a SENSORIUM static file tree (a folder or a ``.zip``), read-only.

Layout (one ``.npy`` per trial under ``data/``)::

    static27204-5-13-GrayImageNet-<hash>/
        data/{images,responses,behavior,pupil_center}/<k>.npy
        meta/neurons/*.npy  meta/trials/*.npy  meta/statistics/<field>/all/{mean,std,...}.npy

Each data folder is read once into one contiguous array (``FileTree.load``). Unlike the reference
reader, nothing is ever written into the data folder: zips are extracted into a user cache folder.
"""
import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TRIAL_FIELDS = ("images", "responses", "behavior", "pupil_center")
READ_THREADS = min(4, os.cpu_count() or 1)  # trial files are read in parallel; mostly page-cache copies


class DatasetFormatError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent with the rest of the tree."""


class AttrDict(dict):
    """A dict whose keys are also attributes (``stats.images.all.mean``), like the reference handlers."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self):
        return list(self.keys())


def cache_dir() -> Path:
    """The folder zips are extracted into: ``$V1FABRIK_CACHE`` or ``~/.cache/v1fabrik``."""
    root = os.environ.get("V1FABRIK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "v1fabrik"
    return Path(root) / "datasets"


def resolve(path) -> Path:
    """Return the dataset folder for ``path``, extracting a ``.zip`` into the cache once."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.is_dir():
        return path
    if path.suffix != ".zip":
        raise DatasetFormatError(f"dataset {path} is neither a folder nor a .zip file")
    stat = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{path.stem}-{tag}"
    folder = target / path.stem
    if not folder.is_dir():
        _extract(path, target)
    if not folder.is_dir():
        raise DatasetFormatError(f"{path} does not contain the top-level folder {path.stem}/")
    return folder


def _extract(zip_path: Path, target: Path) -> None:
    """Extract into a temporary sibling folder, then rename, so no half-extracted tree remains."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    logger.info("extracting %s into %s", zip_path, target)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise DatasetFormatError(f"{zip_path} is corrupt (first bad member: {bad})")
            archive.extractall(tmp)
        tmp.rename(target)
    except zipfile.BadZipFile as err:
        raise DatasetFormatError(f"{zip_path} is not a readable zip file ({err})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetFormatError(f"cannot read {path}: {err}") from None


def _load_folder(folder: Path) -> AttrDict:
    """Every ``*.npy`` in ``folder`` (recursively for sub-folders) as a nested ``AttrDict``."""
    out = AttrDict()
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            out[entry.name] = _load_folder(entry)
        elif entry.suffix == ".npy":
            out[entry.stem] = _load_npy(entry)
    return out


def _stack_trials(folder: Path, n_trials: int) -> np.ndarray:
    """Read ``folder/0.npy .. folder/<n-1>.npy`` into one contiguous array.

    All files written by one ``np.save`` call share their header, so the header is parsed once and
    each file is read with one ``readv`` straight into its row (plus the header, to compare, and one
    byte more, to detect a longer file), by ``READ_THREADS`` threads; a file that differs is read
    with ``np.load``.
    """
    first = folder / "0.npy"
    if not first.exists():
        raise DatasetFormatError(f"{first} is missing")
    with open(first, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        header = fh.tell()
        fh.seek(0)
        prefix = fh.read(header)
    if dtype.hasobject:
        raise DatasetFormatError(f"{first} holds Python objects; only numeric arrays are supported")
    out = np.empty((n_trials, *shape), dtype=dtype)
    rows = out.reshape(n_trials, -1).view(np.uint8)  # each trial's bytes, filled in place
    if fortran:  # the rows are C-ordered: such files go through np.load
        odd = range(n_trials)
    else:
        bounds = np.linspace(0, n_trials, READ_THREADS * 4 + 1).astype(int)
        with ThreadPoolExecutor(READ_THREADS) as pool:  # readv releases the GIL
            chunks = pool.map(lambda b: _read_rows(folder, rows, range(*b), prefix, n_trials), zip(bounds, bounds[1:]))
            odd = [k for chunk in chunks for k in chunk]
    for k in odd:
        path = folder / f"{k}.npy"
        value = _load_npy(path)
        if value.shape != tuple(shape):
            raise DatasetFormatError(f"{path} has shape {value.shape}, but {first} has {tuple(shape)}")
        out[k] = value
    return out


def _read_rows(folder: Path, rows: np.ndarray, trials: range, prefix: bytes, n_trials: int) -> list:
    """Read each trial file straight into its row; returns the trials whose file is not laid out like the first."""
    head, extra, size = bytearray(len(prefix)), bytearray(1), len(prefix) + rows.shape[1]
    odd = []
    for k in trials:
        path = f"{folder}/{k}.npy"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise DatasetFormatError(f"{path} is missing (expected trials 0..{n_trials - 1})") from None
        try:
            same = os.readv(fd, [head, rows[k], extra]) == size and head == prefix
        finally:
            os.close(fd)
        if not same:
            odd.append(k)
    return odd


class FileTree:
    """A validated, read-only view of one static file tree.

    Attributes:
        path: the dataset folder.
        neurons, trial_info, statistics: the ``meta/`` arrays as nested ``AttrDict``s.
        n_trials: number of trials (length of ``meta/trials/tiers.npy``).
    """

    def __init__(self, path):
        self.source = Path(path)
        self.path = resolve(path)
        for sub in ("data", "meta/neurons", "meta/trials", "meta/statistics"):
            if not (self.path / sub).is_dir():
                raise DatasetFormatError(f"{self.path / sub} is missing: not a static file tree")
        self.neurons = _load_folder(self.path / "meta/neurons")
        self.trial_info = _load_folder(self.path / "meta/trials")
        self.statistics = _load_folder(self.path / "meta/statistics")
        for name in ("tiers", "unit_ids"):
            group = "trials" if name == "tiers" else "neurons"
            if name not in (self.trial_info if group == "trials" else self.neurons):
                raise DatasetFormatError(f"{self.path / 'meta' / group / (name + '.npy')} is missing")
        self.n_trials = len(self.trial_info.tiers)
        self.n_neurons = len(self.neurons.unit_ids)
        self._check_meta_lengths()

    def _check_meta_lengths(self):
        for group, arrays, n in (("trials", self.trial_info, self.n_trials), ("neurons", self.neurons, self.n_neurons)):
            for name, value in arrays.items():
                if isinstance(value, np.ndarray) and value.ndim and len(value) != n:
                    raise DatasetFormatError(
                        f"{self.path / 'meta' / group / (name + '.npy')} has {len(value)} entries, expected {n}"
                    )

    def count(self, field: str) -> int:
        """Number of trial files in ``data/<field>``."""
        folder = self.path / "data" / field
        if not folder.is_dir():
            raise DatasetFormatError(f"{folder} is missing")
        return sum(1 for entry in os.scandir(folder) if entry.name.endswith(".npy"))

    def load(self, field: str, memmap: bool = False) -> np.ndarray:
        """All trials of ``data/<field>`` as one array (n_trials, ...), validated.

        With ``memmap``, the array is saved once as one ``.npy`` in the user cache (keyed by the
        folder's path and modification times) and later loads memory-map it instead of reading
        thousands of files.
        """
        if not memmap:
            return self._read(field)
        store = self._store_path(field)
        if not store.exists():
            values = self._read(field)
            store.parent.mkdir(parents=True, exist_ok=True)
            partial = store.with_name(f"{field}.{os.getpid()}.partial.npy")
            np.save(partial, values)
            os.replace(partial, store)
            logger.info("cached %s/data/%s as %s", self.path, field, store)
        return np.load(store, mmap_mode="r")

    def _store_path(self, field: str) -> Path:
        folder = self.path / "data" / field
        stamps = [str(p.stat().st_mtime_ns) for p in (folder, folder / "0.npy", folder / f"{self.n_trials - 1}.npy")
                  if p.exists()]
        key = "|".join([str(self.path.resolve()), field, str(self.n_trials), *stamps])
        return cache_dir().parent / "stores" / hashlib.sha1(key.encode()).hexdigest()[:16] / f"{field}.npy"

    def _read(self, field: str) -> np.ndarray:
        folder = self.path / "data" / field
        n_files = self.count(field)
        if n_files != self.n_trials:
            raise DatasetFormatError(
                f"{folder} holds {n_files} trials but {self.path / 'meta/trials/tiers.npy'} lists {self.n_trials}"
            )
        values = _stack_trials(folder, self.n_trials)
        if field == "responses" and values.shape[1:] != (self.n_neurons,):
            raise DatasetFormatError(
                f"{folder} has responses of shape {values.shape[1:]}, but "
                f"{self.path / 'meta/neurons/unit_ids.npy'} lists {self.n_neurons} neurons"
            )
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            trial = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
            raise DatasetFormatError(f"{folder / f'{trial}.npy'} contains NaN or inf")
        return values

    def stat(self, field: str, name: str) -> np.ndarray:
        """``meta/statistics/<field>/all/<name>.npy``, checked to be finite."""
        path = self.path / "meta/statistics" / field / "all" / f"{name}.npy"
        try:
            value = self.statistics[field]["all"][name]
        except KeyError:
            raise DatasetFormatError(f"{path} is missing") from None
        if not np.isfinite(value).all():
            raise DatasetFormatError(f"{path} contains NaN or inf")
        return np.asarray(value, dtype=np.float64)
