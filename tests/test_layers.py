"""The direction of imports (issue 12): the import-linter contract in pyproject.toml holds, and
the same check reports a planted violation (so it can fail)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("jobs", "lakehouse", "quality", "florence2")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""}, timeout=300)


def test_imports_flow_one_way():
    r = _lint(ROOT)
    assert r.returncode == 0 and "1 kept, 0 broken" in r.stdout, r.stdout + r.stderr


def test_a_planted_upward_import_is_reported(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    geometry = tmp_path / "florence2" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n\ndef _tables():\n    from lakehouse import tables\n    return tables\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "florence2.geometry -> lakehouse.tables" in r.stdout, r.stdout + r.stderr


def test_every_job_is_a_thin_command_line():
    """Jobs parse arguments and call one library function; each one's --help runs without Spark or a model."""
    jobs = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem not in ("__init__", "common"))
    for job in jobs:
        r = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (job, r.stderr[-2000:])
        body = (ROOT / "jobs" / f"{job}.py").read_text()
        assert body.count("\n") < 100, f"jobs/{job}.py has {body.count(chr(10))} lines: move the logic into a library"


def test_a_second_clone_runs_its_own_code_on_spark_workers(tmp_path):
    """The virtualenv is shared between clones and its editable install points at one of them; a job
    started in another clone must run that clone's code in the driver and in Spark's Python workers."""
    import json
    import os

    clone = tmp_path / "clone"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, clone / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    # started by a script outside the clone (as the benches are): only sys.path names the clone
    script = tmp_path / "which.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(clone)!r})\n"
                      "from lakehouse.spark import main\nmain(['--which-code'])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"FLD_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    where = json.loads(r.stdout.strip().splitlines()[-1])
    assert where == {"driver": str(clone), "worker": str(clone)}, where


def test_the_gpu_box_path_needs_no_spark(tmp_path):
    """``bench/learning_report.py --direct`` runs where there is no Java or Spark (a lent GPU box): building
    its recipe data from the synthetic truth must not import pyspark, mlflow or the quality tools."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\nBLOCK = {'pyspark', 'py4j', 'mlflow', 'great_expectations', 'spacy', 'delta', 'petastorm', "
        "'horovod'}\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n            raise ImportError('not on a GPU box: ' + name)\n"
        "sys.meta_path.insert(0, B())\n")
    code = ("import sys\nsys.path.insert(0, 'bench')\nimport learning_report  # noqa\n"
            "from lakehouse.synthetic import synthetic_rows, write_recipe_data\n"
            "from florence2 import recipe\n"
            f"d = write_recipe_data(synthetic_rows(3, 5, ['<OD>', '<CAPTION>']), {str(tmp_path / 'data')!r}, 300)\n"
            "print(d['rows'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "", "HOME": str(tmp_path)})
    assert r.returncode == 0 and int(r.stdout.split()[-1]) > 0, r.stderr[-2000:]
