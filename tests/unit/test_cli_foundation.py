"""The `v1fabrik` command line: db commands without a server, synth, one-line errors."""
import numpy as np

from pipeline.datasets import synthetic
from schemas.cli import main as cli


def test_cli_starts_nothing_when_DJ_HOST_is_set(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DJ_HOST", "db.lab.example")
    monkeypatch.setenv("V1FABRIK_HOME", str(tmp_path / "home"))
    with caplog.at_level("INFO"):
        assert cli.main(["db", "up"]) == 0
    assert "DJ_HOST=db.lab.example is set: using that server and starting nothing." in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_cli_status_and_down_without_a_server(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DJ_HOST", raising=False)
    monkeypatch.setenv("V1FABRIK_HOME", str(tmp_path))
    assert cli.main(["db", "status"]) == 3
    assert "no local database server is running: start one with `v1fabrik db up`" in capsys.readouterr().out
    assert cli.main(["db", "down"]) == 0


def test_cli_prints_user_errors_as_one_line(monkeypatch, capsys):
    monkeypatch.delenv("DJ_HOST", raising=False)
    monkeypatch.setenv("DJ_PORT", "nope")
    assert cli.main(["db", "status"]) == 1
    assert capsys.readouterr().err == "v1fabrik: error: DJ_PORT='nope' is not a port number\n"


def test_cli_synth_applies_preset_then_overrides(tmp_path):
    assert cli.main(["synth", str(tmp_path), "--preset", "tiny", "--neurons", "7", "--image-size", "18", "32"]) == 0
    [folder] = [path for path in tmp_path.glob("static*") if path.is_dir()]
    assert np.load(folder / "meta/neurons/unit_ids.npy").tolist() == list(range(1, 8))
    assert np.load(next((folder / "data/images").glob("*.npy"))).shape[-2:] == (18, 32)


def test_cli_synth_names_an_unknown_preset(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path), "--preset", "huge"]) == 1
    choices = ", ".join(synthetic.PRESETS)
    assert capsys.readouterr().err == f"v1fabrik: error: unknown preset 'huge'; choose one of {choices}\n"
