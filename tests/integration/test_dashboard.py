"""The dashboard in a real browser (Debian's headless Chromium through Selenium) against the test database.

Every page is loaded from ``v1fabrik dashboard`` (a subprocess on a free port) and from ``--static``; the
numbers shown are checked against the tables, and the browser's console must stay free of errors. With
``V1FABRIK_DASHBOARD_SCREENSHOTS=docs/dashboard`` the served pages are also saved as PNG screenshots.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import synthetic
from pipeline.utility import ground_truth
from schemas.cli import main as cli
from schemas.cli.dashboard import data
from tests.conftest import REPO
from tests.integration.test_pipeline import DATASET, MODEL, TINY_MODEL, TRAINER

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
POSITIONS = {k: v for k, v in TINY_MODEL.items() if k != "grid_mean_predictor"}  # readout positions in _mu


@pytest.fixture(scope="module")
def lab(fabrik, db_prefix, tmp_path_factory):
    """Two trained and scored models (lr 0.01 and 0.02) and their scored ensemble, a third seed pending, one
    reserved at a checkpoint, one failed, and a study with two trials."""
    path = synthetic.generate(tmp_path_factory.mktemp("data"), **synthetic.PRESETS["tiny"])
    dataset = fabrik.Dataset().add_entry(DATASET, {"paths": [str(path)], "batch_size": 16,
                                                   "include_eye_position": True}, comment="tiny")
    model = fabrik.Model().add_entry(MODEL, POSITIONS, comment="positions")
    trainers = [fabrik.Trainer().add_entry(TRAINER, {"epochs": 3, "lr": lr}, comment=f"lr {lr}") for lr in (0.01, 0.02)]
    fabrik.Experiment().add("dash", [dataset], [model], trainers, [1, 2])
    trained = [{**dataset, **model, **trainers[0], "seed": 1}, {**dataset, **model, **trainers[1], "seed": 1}]
    fabrik.TrainedModel.populate(trained)
    fabrik.Score.populate()
    fabrik.DataInfo.populate()  # models then open without their data, and the truth comes along
    ensemble = fabrik.Ensemble().create(trained, comment="both learning rates")
    fabrik.EnsembleScore.populate(ensemble)
    jobs = fabrik.TrainedModel.jobs
    jobs.refresh()
    reserved, failed = {**trained[0], "seed": 2}, {**trained[1], "seed": 2}
    assert jobs.reserve(reserved) and jobs.reserve(failed)
    jobs.error(failed, "CUDA out of memory on the test GPU")
    fabrik.Checkpoint.insert1({**reserved, "epoch": 2, "state": {"epoch": 2}, "checkpoint_host": "gpu-node"})
    fabrik.Study.insert1({"experiment_name": "dash", "study_fabrikant": fabrik.Fabrikant.ensure_current_user(),
                          "n_trials": 4, "spec": {"name": "dash"}})
    fabrik.Study.Trial.insert([{"experiment_name": "dash", "trial_number": n, "params": {"trainer.lr": lr}, **dataset,
                                **model, **t} for n, (lr, t) in enumerate(zip((0.01, 0.02), trainers))])
    return {"trained": trained, "reserved": reserved, "ensemble": ensemble, "path": path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(lab, db_prefix):
    """``v1fabrik dashboard --port P`` on this module's schemas; its base URL."""
    port = _free_port()
    env = {**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix}
    process = subprocess.Popen([sys.executable, "-m", "schemas.cli.main", "dashboard", "--port", str(port)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"the dashboard did not start: {process.communicate()[0]}", pytrace=False)
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium from Debian's packages, through its chromedriver (nothing is downloaded)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install -y chromium chromium-driver",
                    pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _load(driver, url, screenshot=None):
    """Open ``url``, wait for its plots, fail on any console error; returns the page's text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.1)
    undrawn = ["?"]
    while undrawn and time.monotonic() < deadline:
        undrawn = [p.get_attribute("id") for p in driver.find_elements(By.CSS_SELECTOR, ".plotly-graph-div")
                   if not p.find_elements(By.CSS_SELECTOR, ".main-svg")]
        time.sleep(0.1)
    log = driver.get_log("browser")
    assert not undrawn, f"{url}: plots {undrawn} were not drawn ({log})"
    errors = [entry["message"] for entry in log if entry["level"] == "SEVERE"]
    assert not errors, f"{url}: console errors {errors}"
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 150)
        driver.save_screenshot(str(screenshot))
        driver.set_window_size(1400, 1000)
    return driver.find_element(By.TAG_NAME, "body").text


def _cells(driver, selector) -> list:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, selector)
    return [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _shot(name):
    folder = os.environ.get("V1FABRIK_DASHBOARD_SCREENSHOTS")
    return Path(folder) / f"{name}.png" if folder else None


def test_every_served_page_shows_the_database_numbers_without_console_errors(fabrik, lab, server, browser):
    from selenium.webdriver.common.by import By

    text = _load(browser, server + "index.html", _shot("experiments"))
    owner = fabrik.Fabrikant.ensure_current_user()
    assert _cells(browser, "#experiments tr:has(td)") == [["dash", owner, "", "4", "2"]]
    assert "lr 0.02" in text and "password" not in text.lower()

    _load(browser, server + "queue.html", _shot("queue"))
    counts = {row[0]: row[1:] for row in _cells(browser, "#queue tr:has(td)")}
    progress = fabrik.TrainedModel.jobs.progress()
    assert counts["TrainedModel"] == [str(progress["pending"]), "1", "1", "2"] and progress["pending"] == 2
    assert counts["Score"][3] == str(len(fabrik.Score()))
    reserved = _cells(browser, ".reserved[data-table=TrainedModel] tr:has(td)")
    assert len(reserved) == 1 and reserved[0][3] == "2"  # the checkpoint's epoch
    errors = _cells(browser, ".errors[data-table=TrainedModel] tr:has(td)")
    assert [e[3] for e in errors] == ["CUDA out of memory on the test GPU"]

    _load(browser, server + "scores.html", _shot("scores"))
    models = "#scores tbody tr:not([data-model^=ensemble])"
    rows = browser.find_elements(By.CSS_SELECTOR, models)
    stored = {data.model_id(k): k for k in lab["trained"]}
    assert sorted(r.get_attribute("data-model") for r in rows) == sorted(stored)
    ensemble_id = "ensemble-" + lab["ensemble"]["ensemble_hash"][:12]
    ensemble = browser.find_element(By.CSS_SELECTOR, f"#scores tr[data-model={ensemble_id}]")
    cell = ensemble.find_element(By.CSS_SELECTOR, "td[data-measure=test_correlation]")
    measure = {"measure_name": "test_correlation"}
    value = (fabrik.EnsembleScore * fabrik.Measure & lab["ensemble"] & measure).fetch1("value")
    assert float(cell.text) == pytest.approx(value, abs=1e-4)
    assert ensemble.find_elements(By.TAG_NAME, "td")[1].text == "ensemble of 2"
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#scores th")]
    assert "trainer.lr" in headers and "trainer.epochs" not in headers  # only the differing config entries
    for row in rows:
        key = stored[row.get_attribute("data-model")]
        shown = row.find_elements(By.TAG_NAME, "td")
        assert float(shown[2].text) == pytest.approx((fabrik.TrainedModel & key).fetch1("score"), abs=1e-4)
        test_corr = (fabrik.Score * fabrik.Measure & key & {"measure_name": "test_correlation"}).fetch1("value")
        cell = row.find_element(By.CSS_SELECTOR, "td[data-measure=test_correlation]")
        assert float(cell.text) == pytest.approx(test_corr, abs=1e-4)
    lr = headers.index("trainer.lr")
    browser.find_elements(By.CSS_SELECTOR, "#scores th")[lr].click()  # descending
    assert [r[lr] for r in _cells(browser, models)] == ["0.02", "0.01"]
    browser.find_element(By.ID, "filter").send_keys("lr 0.01")
    visible = [r for r in browser.find_elements(By.CSS_SELECTOR, models) if r.is_displayed()]
    assert [r.find_elements(By.TAG_NAME, "td")[lr].text for r in visible] == ["0.01"]

    for name, key in zip(("model", "model-2"), lab["trained"]):
        _load(browser, f"{server}models/{data.model_id(key)}.html", _shot(name) if name == "model" else None)
        units = {row[0]: row[1:] for row in _cells(browser, "#unit-stats tr:has(td)")}
        measure = fabrik.Measure & {"measure_name": "test_correlation"}
        values = (fabrik.Score.Unit * measure & key).to_arrays("unit_value")
        stored = (fabrik.Score * measure & key).fetch1("value")
        assert units["test_correlation"][:3] == [str(len(values)), f"{stored:.4f}",
                                                 f"{np.sort(values.astype(float))[len(values) // 2]:.4f}"]
        feve = (fabrik.Score * (fabrik.Measure & {"measure_name": "feve"}) & key).fetch1("value")
        assert units["feve"][1] == (f"{feve:.4f}" if feve is not None else "undefined")
        assert browser.find_element(By.ID, "curves") and browser.find_element(By.ID, "rf")  # history and positions
        dataloaders, net = fabrik.TrainedModel().load_model(key)  # the truth, computed here from the files
        (data_key, loader), = dataloaders["train"].items()
        learned = ground_truth.learned_rf_positions(net, data_key)
        true = ground_truth.true_rf_positions(net, loader, synthetic.load_ground_truth(lab["path"]))
        r_x, r_y = (np.corrcoef(learned[:, axis], true[:, axis])[0, 1] for axis in (0, 1))
        shown = browser.find_element(By.CSS_SELECTOR, f".rf-truth[data-readout='readout.{data_key}']").text
        assert f"r = {r_x:.4f} (x), {r_y:.4f} (y)" in shown.replace("\n", " ")

    _load(browser, server + "studies.html", _shot("studies"))
    trials = _cells(browser, ".trials[data-study=dash] tr:has(td)")
    scores = [(fabrik.TrainedModel & k).fetch1("score") for k in lab["trained"]]
    assert [(t[0], float(t[1])) for t in trials] == [("0", pytest.approx(s, abs=1e-4)) for s in scores[:1]] + [
        ("1", pytest.approx(scores[1], abs=1e-4))]
    assert browser.find_element(By.ID, "params-dash")  # parallel coordinates of the trials' parameters


def test_static_pages_are_the_same_pages_as_files(fabrik, lab, db_prefix, browser, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)
    assert cli.main(["dashboard", "--static", str(tmp_path)]) == 0
    assert "wrote 6 pages" in capsys.readouterr().out
    pages = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.html"))
    assert pages == sorted(["index.html", "queue.html", "scores.html", "studies.html",
                            *(f"models/{data.model_id(k)}.html" for k in lab["trained"])])
    for page in pages:
        _load(browser, (tmp_path / page).as_uri())
    model = lab["trained"][1]
    _load(browser, (tmp_path / f"models/{data.model_id(model)}.html").as_uri())
    score = float(browser.find_element("id", "score").text)
    assert score == pytest.approx((fabrik.TrainedModel & model).fetch1("score"), abs=1e-4)
    shutil.rmtree(tmp_path)
