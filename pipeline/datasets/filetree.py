"""Reading and validating a SENSORIUM static file tree (a folder or a ``.zip``), read-only.

Layout (one ``.npy`` per trial under ``data/``)::

    static27204-5-13-GrayImageNet-<hash>/
        data/{images,responses,behavior,pupil_center}/<k>.npy
        meta/neurons/*.npy  meta/trials/*.npy  meta/statistics/<field>/all/{mean,std,...}.npy

Each data folder is read once into one contiguous array (``FileTree.load``). Unlike the reference
reader, nothing is ever written into the data folder: zips are extracted into a user cache folder.
"""
import errno
import hashlib
import logging
import os
import queue
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

TRIAL_FIELDS = ("images", "responses", "behavior", "pupil_center")
BLOCK_BYTES = 4 << 20  # trial files are read and checked in blocks of about this size (they stay in cache)
KEEP_FREED_BYTES = 31 << 20  # see _keep_freed_memory; glibc caps its dynamic mmap threshold at 32 MiB


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
    """Extract into a temporary sibling folder, then rename, so no half-extracted tree remains.

    When another process extracted the same zip meanwhile, its complete ``target`` is kept and ours
    discarded (the caller validates ``target`` either way).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    logger.info("extracting %s into %s", zip_path, target)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise DatasetFormatError(f"{zip_path} is corrupt (first bad member: {bad})")
            archive.extractall(tmp)
        _publish(tmp, target)
    except zipfile.BadZipFile as err:
        raise DatasetFormatError(f"{zip_path} is not a readable zip file ({err})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; if another process's rename won the race, keep its ``target``."""
    try:
        tmp.rename(target)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        logger.info("%s was extracted by another process meanwhile; using that copy", target)


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


def _layout(first: Path):
    """``(shape, fortran_order, dtype, header bytes)`` of the ``.npy`` file ``first``."""
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
    return tuple(shape), fortran, dtype, prefix


def read_threads() -> int:
    """How many threads read trial files: this process's torch thread budget, at most 4."""
    return min(4, torch.get_num_threads())


def _keep_freed_memory() -> None:
    """Allocate and free ``KEEP_FREED_BYTES``, so that glibc reuses freed temporaries up to that size.

    glibc maps every allocation above its mmap threshold (128 KiB at start) afresh and gives freed
    memory back to the system, until freeing such a mapping raises the threshold (mallopt(3), dynamic
    mmap threshold). Until then each block's temporaries were page-faulted in anew: for float64
    images ~1.7 GB of page faults, more than half the CPU time of reading them. Elsewhere a no-op.
    """
    np.empty(KEEP_FREED_BYTES, np.uint8)


def _stack_trials(folder: Path, n_trials: int, reduce=None) -> np.ndarray:
    """Read ``folder/0.npy .. folder/<n-1>.npy`` into one contiguous array, checked to be finite.

    All files written by one ``np.save`` call share their header, so the header is parsed once and
    each file is read with one ``readv`` (plus the header, to compare, and one byte more, to detect a
    longer file), by ``read_threads()`` threads, in blocks of about ``BLOCK_BYTES``; a file that
    differs is read with ``np.load``.

    Args:
        reduce: maps a block of trials (n, ...) to (n, ...) values to keep instead (e.g. smaller
            images). Without it the files are read straight into the result's rows.
    """
    shape, fortran, dtype, prefix = _layout(folder / "0.npy")
    header = None if fortran else prefix  # the rows are C-ordered: Fortran-ordered files go through np.load
    _keep_freed_memory()
    block_rows = max(1, BLOCK_BYTES // max(1, dtype.itemsize * int(np.prod(shape))))
    row = reduce(np.zeros((1, *shape), dtype)) if reduce else np.empty((1, *shape), dtype)
    out = np.empty((n_trials, *row.shape[1:]), dtype=row.dtype)
    threads = read_threads()
    buffers = queue.SimpleQueue()  # one raw block per thread, reused (fresh memory costs page faults)
    for _ in range(threads if reduce else 0):
        buffers.put(np.empty((block_rows, *shape), dtype))

    def read(start):
        trials = range(start, min(start + block_rows, n_trials))
        if not reduce:
            return _read_block(folder, out[start:trials.stop], trials, header, n_trials)
        buffer = buffers.get()
        try:
            _read_block(folder, buffer[:len(trials)], trials, header, n_trials)
            out[start:trials.stop] = reduce(buffer[:len(trials)])
        finally:
            buffers.put(buffer)

    with ThreadPoolExecutor(threads) as pool:  # readv and numpy's loops release the GIL
        for _ in pool.map(read, range(0, n_trials, block_rows)):
            pass
    return out


def _read_block(folder: Path, block: np.ndarray, trials: range, prefix, n_trials: int) -> None:
    """Read ``trials`` into the rows of ``block``, then check that they are finite.

    Files whose header is not ``prefix`` (all of them when it is None) go through ``np.load``.
    """
    flat = block.reshape(len(block), -1)
    head, extra = bytearray(len(prefix or b"")), bytearray(1)
    for row, k in zip(flat.view(np.uint8), trials):
        path = f"{folder}/{k}.npy"
        same = prefix is not None and _readv(path, [head, row, extra], n_trials) == len(head) + len(row)
        if not (same and head == prefix):
            value = _load_npy(Path(path))
            if value.shape != block.shape[1:]:
                raise DatasetFormatError(f"{path} has shape {value.shape}, but {folder}/0.npy has {block.shape[1:]}")
            block[k - trials.start] = value
    if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
        bad = trials.start + int(np.flatnonzero(~np.isfinite(flat).all(axis=1))[0])
        raise DatasetFormatError(f"{folder / f'{bad}.npy'} contains NaN or inf")


def _readv(path: str, buffers: list, n_trials: int) -> int:
    """``os.readv`` of the file at ``path`` into ``buffers``; the number of bytes read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path} is missing (expected trials 0..{n_trials - 1})") from None
    try:
        return os.readv(fd, buffers)
    finally:
        os.close(fd)


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

    def layout(self, field: str):
        """``(shape, dtype)`` of one trial of ``data/<field>`` (from the header of its first file)."""
        shape, _, dtype, _ = _layout(self.path / "data" / field / "0.npy")
        return shape, dtype

    def load(self, field: str, memmap: bool = False, reduce=None) -> np.ndarray:
        """All trials of ``data/<field>`` as one array (n_trials, ...), validated.

        Args:
            memmap: save the array once as one ``.npy`` in the user cache (keyed by the folder's path
                and modification times); later loads memory-map it instead of reading thousands of files.
            reduce: keep ``reduce(block)`` of each block of trials (n, ...) instead of the raw values,
                e.g. rescaled images, so the raw array is never held whole. Not with ``memmap``.
        """
        if memmap and reduce:
            raise ValueError("FileTree.load: reduce cannot be combined with memmap (the store holds raw values)")
        if not memmap:
            return self._read(field, reduce)
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

    def _read(self, field: str, reduce=None) -> np.ndarray:
        folder = self.path / "data" / field
        n_files = self.count(field)
        if n_files != self.n_trials:
            raise DatasetFormatError(
                f"{folder} holds {n_files} trials but {self.path / 'meta/trials/tiers.npy'} lists {self.n_trials}"
            )
        values = _stack_trials(folder, self.n_trials, reduce)
        if field == "responses" and values.shape[1:] != (self.n_neurons,):
            raise DatasetFormatError(
                f"{folder} has responses of shape {values.shape[1:]}, but "
                f"{self.path / 'meta/neurons/unit_ids.npy'} lists {self.n_neurons} neurons"
            )
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
