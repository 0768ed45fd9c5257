"""The notebooks run, top to bottom, on demo data (outputs are not committed)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lakehouse.ingest import run_ingest
from lakehouse.rounds import RoundConfig, run_round
from lakehouse.synthetic import write_world

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_home(spark, tmp_path_factory):
    import sys

    import mlflow

    sys.path.insert(0, str(Path(__file__).parent))
    from florence2 import modeling
    from florence2.pyfunc import log_and_register
    from florence_fixtures import tiny
    from lakehouse.config import load_settings
    from lakehouse.tracking import configure_mlflow

    s = load_settings(home=tmp_path_factory.mktemp("nb") / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=10, seed=2, bad_inputs=False)
    run_ingest(spark, s, log=None)
    run_round(spark, s, RoundConfig(round=1, specialists=[{"type": "rapidocr"}, {"type": "contours"}]), log=lambda *a: None)
    run_round(spark, s, RoundConfig(round=2, specialists=[{"type": "contours", "min_area_frac": 0.002}]), log=lambda *a: None)
    model, proc = tiny()
    modeling.save(model, proc, s.home / "model")
    configure_mlflow(s)
    with mlflow.start_run():
        log_and_register(s.home / "model", "florence2", alias="champion")
    return s


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) == 3
    for nb in NOTEBOOKS:
        doc = nbformat.read(nb, as_version=4)
        assert all(not c.get("outputs") for c in doc.cells if c.cell_type == "code"), nb.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(demo_home, path, monkeypatch, tmp_path):
    monkeypatch.setenv("FLD_HOME", str(demo_home.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    last = nb.cells[-1].outputs
    assert last and any("image/png" in o.get("data", {}) or "text/html" in o.get("data", {}) for o in last)
