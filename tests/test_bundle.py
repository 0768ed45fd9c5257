"""The Databricks bundle validates against the CLI's JSON schema and names only things that exist."""
import json
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "databricks-bundle.schema.json"


def _bundle():
    doc = yaml.safe_load((ROOT / "databricks.yml").read_text())
    for pattern in doc.get("include", []):
        for f in sorted(ROOT.glob(pattern)):
            part = yaml.safe_load(f.read_text())
            for kind, items in part.get("resources", {}).items():
                doc.setdefault("resources", {}).setdefault(kind, {}).update(items)
    return doc


def test_bundle_matches_schema():
    if not SCHEMA.exists():
        pytest.skip(f"bundle schema not present at {SCHEMA}")
    import jsonschema
    import regex  # the schema's patterns use \\p{L}, which only the regex module knows

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not regex.search(patrn, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})
    errors = sorted(cls(json.loads(SCHEMA.read_text())).iter_errors(_bundle()), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])


def test_bundle_names_existing_entry_points():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    tasks = [t for job in _bundle()["resources"]["jobs"].values() for t in job["tasks"]]
    assert tasks
    for t in tasks:
        wheel = t.get("python_wheel_task")
        assert wheel, f"task {t['task_key']} should call a packaged entry point"
        assert wheel["entry_point"] in scripts, wheel
        module = scripts[wheel["entry_point"]].split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
