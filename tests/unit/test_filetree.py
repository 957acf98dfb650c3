"""Validation of static file trees: every malformed input gives one clear error naming the file."""
import multiprocessing
import pathlib
import shutil
import stat
import zipfile

import numpy as np
import pytest
import torch

from pipeline.datasets import DatasetFormatError, static_loaders
from pipeline.datasets.filetree import FileTree, read_threads, resolve
from pipeline.datasets.synthetic import PRESETS, generate


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("tree"), seed=3, **PRESETS["tiny"])


@pytest.fixture
def tree(pristine, tmp_path):
    """A private, editable copy of the tiny dataset."""
    return shutil.copytree(pristine, tmp_path / pristine.name)


def load(path, **config):
    return static_loaders([str(path)], batch_size=16, **config)


def zip_of(folder, into):
    """Zip ``folder`` (with its name as the top-level folder) into the new folder ``into``."""
    into.mkdir()
    archive = into / f"{folder.name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def contents(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(tmp_path / "nowhere")


def test_missing_meta_folder(tree):
    shutil.rmtree(tree / "meta/trials")
    with pytest.raises(DatasetFormatError, match="meta/trials is missing"):
        load(tree)


def test_missing_data_folder(tree):
    shutil.rmtree(tree / "data/behavior")
    assert "train" in load(tree)  # behaviour is not read unless asked for
    with pytest.raises(DatasetFormatError, match="data/behavior is missing"):
        load(tree, include_behavior=True)


def test_missing_statistics_file(tree):
    (tree / "meta/statistics/responses/all/std.npy").unlink()
    with pytest.raises(DatasetFormatError, match="responses/all/std.npy is missing"):
        load(tree)


def test_trial_count_disagrees_with_tiers(tree):
    (tree / "data/responses/7.npy").unlink()
    with pytest.raises(DatasetFormatError, match=r"data/responses holds \d+ trials but .*tiers.npy lists"):
        load(tree)


def test_trial_numbering_gap(tree):
    last = len(np.load(tree / "meta/trials/tiers.npy")) - 1
    (tree / f"data/images/{last}.npy").rename(tree / "data/images/extra.npy")
    with pytest.raises(DatasetFormatError, match=f"images/{last}.npy is missing"):
        load(tree)


def test_one_response_file_has_wrong_width(tree):
    np.save(tree / "data/responses/4.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(DatasetFormatError, match=r"responses/4.npy has shape \(3,\)"):
        load(tree)


def test_response_width_disagrees_with_neuron_metadata(tree):
    for path in (tree / "meta/neurons").glob("*.npy"):
        np.save(path, np.load(path)[:-2])
    with pytest.raises(DatasetFormatError, match="unit_ids.npy lists 38 neurons"):
        load(tree)


def test_neuron_metadata_lengths_disagree(tree):
    np.save(tree / "meta/neurons/area.npy", np.load(tree / "meta/neurons/area.npy")[:5])
    with pytest.raises(DatasetFormatError, match="area.npy has 5 entries, expected 40"):
        load(tree)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_responses(tree, bad):
    value = np.load(tree / "data/responses/9.npy")
    value[2] = bad
    np.save(tree / "data/responses/9.npy", value)
    with pytest.raises(DatasetFormatError, match="responses/9.npy contains NaN or inf"):
        load(tree)


def test_nan_in_float_images_is_found_even_where_rescaling_never_looks(tmp_path):
    path = generate(tmp_path, seed=3, image_dtype="float32", **PRESETS["tiny"])
    value = np.load(path / "data/images/12.npy")
    value[0, 0, 0] = np.nan  # at scale 0.25 no output pixel samples row 0
    np.save(path / "data/images/12.npy", value)
    with pytest.raises(DatasetFormatError, match="images/12.npy contains NaN or inf"):
        load(path, scale=0.25)


def test_a_file_laid_out_differently_is_still_read(tree):
    value = np.load(tree / "data/images/5.npy")
    np.save(tree / "data/images/5.npy", np.asfortranarray(value.astype(np.float64)))
    images = FileTree(tree).load("images")
    assert images.dtype == np.uint8 and np.array_equal(images[5], value)


def test_trial_files_are_read_with_the_torch_thread_budget():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert read_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert read_threads() == min(4, threads)


def test_zero_std_statistics_refused(tree):
    np.save(tree / "meta/statistics/pupil_center/all/std.npy", np.zeros(2))
    with pytest.raises(DatasetFormatError, match="pupil_center/all/std.npy has zeros"):
        load(tree, include_eye_position=True)


def test_unknown_tier_in_file(tree):
    tiers = np.load(tree / "meta/trials/tiers.npy")
    tiers[0] = "holdout"
    np.save(tree / "meta/trials/tiers.npy", tiers)
    with pytest.raises(ValueError, match=r"tiers.npy has unknown tiers \['holdout'\]"):
        load(tree)


def test_unknown_tier_argument(pristine):
    with pytest.raises(ValueError, match="tier 'final_test' is not in"):
        load(pristine, tier="final_test")
    assert list(load(pristine, tier="test")) == ["test"]


def test_unreadable_zip(tmp_path, monkeypatch):
    monkeypatch.setenv("V1FABRIK_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "static1-2-3-GrayImageNet-x.zip"
    broken.write_bytes(b"this is not a zip archive")
    with pytest.raises(DatasetFormatError, match="static1-2-3-GrayImageNet-x.zip is not a readable zip"):
        load(broken)
    assert not any((tmp_path / "cache").rglob("*.npy"))  # nothing half-extracted left behind


def test_zip_extracts_into_cache_and_leaves_read_only_data_alone(pristine, tmp_path, monkeypatch):
    monkeypatch.setenv("V1FABRIK_CACHE", str(tmp_path / "cache"))
    share = tmp_path / "share"
    archive = zip_of(pristine, share)
    share.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        from_zip = load(archive, scale=0.5)
        from_folder = load(pristine, scale=0.5)
        assert sorted(p.name for p in share.iterdir()) == [archive.name]
    finally:
        share.chmod(stat.S_IRWXU)
    key = next(iter(from_folder["test"]))
    assert list(from_zip["test"]) == [key]
    for a, b in zip(from_zip["test"][key], from_folder["test"][key]):
        assert all((x == y).all() for x, y in zip(a, b))
    assert from_zip["test"][key].dataset.path.is_relative_to(tmp_path / "cache")


def test_reading_does_not_write_into_the_dataset(pristine):
    before = {p: p.stat().st_mtime_ns for p in pristine.rglob("*")}
    FileTree(pristine).load("images")
    load(pristine, include_behavior=True, include_eye_position=True)
    assert {p: p.stat().st_mtime_ns for p in pristine.rglob("*")} == before


def _resolve_after_barrier(archive, barrier, results):
    """In a child process: extract ``archive``, but wait for the other process right before the rename."""
    rename = pathlib.Path.rename

    def synchronised_rename(self, target):
        barrier.wait(timeout=60)
        return rename(self, target)

    pathlib.Path.rename = synchronised_rename
    try:
        results.put(str(resolve(archive)))
    except Exception as err:  # reported to the test
        results.put(f"failed: {err!r}")


def test_two_processes_extracting_the_same_zip_both_get_the_complete_tree(pristine, tmp_path, monkeypatch):
    monkeypatch.setenv("V1FABRIK_CACHE", str(tmp_path / "cache"))
    archive = zip_of(pristine, tmp_path / "share")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_resolve_after_barrier, args=(archive, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    folders = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert folders[0] == folders[1] and not folders[0].startswith("failed"), folders
    assert contents(pathlib.Path(folders[0])) == contents(pristine)
    leftovers = [p.name for p in pathlib.Path(folders[0]).parent.parent.iterdir()]
    assert leftovers == [pathlib.Path(folders[0]).parent.name]  # the loser's temporary folder is gone


def test_a_winner_without_the_top_level_folder_is_refused(pristine, tmp_path, monkeypatch):
    monkeypatch.setenv("V1FABRIK_CACHE", str(tmp_path / "cache"))
    archive = zip_of(pristine, tmp_path / "share")
    rename = pathlib.Path.rename

    def other_process_wins(self, target):
        (target / "something-else").mkdir(parents=True)
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", other_process_wins)
    with pytest.raises(DatasetFormatError, match=f"does not contain the top-level folder {pristine.name}/"):
        resolve(archive)
