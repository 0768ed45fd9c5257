"""`mlflow models serve` on a registered Florence-2 pyfunc, on loopback, with good and bad requests."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from lakehouse.synthetic import generate

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import mlflow

    from florence2.pyfunc import log_and_register
    from lakehouse.config import load_settings
    from lakehouse.tracking import configure_mlflow

    home = tmp_path_factory.mktemp("serve") / "fld_home"
    s = load_settings(home=home)
    from florence2 import modeling

    from florence_fixtures import train_eight

    model, proc, _ = train_eight(max_steps=400, stop_loss=0.02)
    modeling.save(model, proc, home / "model")
    uri = configure_mlflow(s)
    with mlflow.start_run():
        reg = log_and_register(home / "model", "florence2", alias="champion")
    port = _free_port()
    # the scoring server execs uvicorn from PATH: the venv's bin must be on it
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                               "models:/florence2@champion", "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port), "--workers", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/ping", timeout=2).status == 200:
                break
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(1)
        assert server.poll() is None, server.stdout.read().decode()[-3000:]
    else:
        server.kill()
        pytest.fail("mlflow models serve did not come up in 180 s")
    yield url, reg
    os.killpg(server.pid, 9)
    server.wait(30)


def _post(url, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_serves_five_tasks_with_parsed_outputs(served):
    url, _ = served
    scenes = list(generate(3, seed=5))
    s, img = scenes[0]
    b64 = _b64(img)
    rows = [{"image": b64, "task": "<OD>"}, {"image": b64, "task": "<CAPTION>"},
            {"image": b64, "task": "<OCR_WITH_REGION>"},
            {"image": b64, "task": "<CAPTION_TO_PHRASE_GROUNDING>", "text": s.captions["brief"]},
            {"image": _b64(scenes[1][1]), "task": "<REFERRING_EXPRESSION_SEGMENTATION>", "text": "the red circle"},
            {"image": b64, "task": "<REGION_TO_CATEGORY>", "region": json.dumps(s.objects[0].bbox)}]
    status, out = _post(url, {"dataframe_records": rows})
    assert status == 200, out
    preds = out["predictions"]
    assert [p["task"] for p in preds] == [r["task"] for r in rows]
    ans = [json.loads(p["answer"]) for p in preds]
    assert set(ans[0]) == {"bboxes", "labels", "scores"} and len(ans[0]["bboxes"]) == len(ans[0]["scores"])
    assert isinstance(ans[1], str) and ans[1] == preds[1]["raw_text"].strip()
    assert set(ans[2]) == {"quad_boxes", "labels", "scores"}
    assert set(ans[3]) == {"bboxes", "labels", "scores"}
    assert set(ans[4]) == {"polygons", "labels", "scores"}
    assert isinstance(ans[5], str)


@pytest.mark.parametrize("body, raw, message", [
    (b"{not json", True, ""),
    ({"dataframe_records": [{"image": base64.b64encode(b"hello").decode(), "task": "<OD>"}]}, False, "not an image"),
    ({"dataframe_records": [{"image": "@@@", "task": "<OD>"}]}, False, "not valid base64"),
    ({"dataframe_records": [{"image": "BIG", "task": "<OD>"}]}, False, "limit is"),
    ({"dataframe_records": [{"image": "OK", "task": "<DETECT_ALL>"}]}, False, "unknown task"),
    ({"dataframe_records": [{"image": "OK", "task": "<CAPTION_TO_PHRASE_GROUNDING>"}]}, False, "needs a text input"),
])
def test_bad_requests_get_4xx_and_server_keeps_serving(served, body, raw, message):
    url, _ = served
    if not raw:
        rec = body["dataframe_records"][0]
        if rec["image"] == "BIG":
            rec["image"] = _b64(Image.new("1", (8000, 6000)))
        elif rec["image"] == "OK":
            rec["image"] = _b64(Image.new("RGB", (64, 48), (200, 10, 10)))
    status, out = _post(url, body, raw=raw)
    assert 400 <= status < 500, (status, out)
    assert message in json.dumps(out)
    ok, out = _post(url, {"dataframe_records": [{"image": _b64(Image.new("RGB", (32, 32))), "task": "<CAPTION>"}]})
    assert ok == 200 and out["predictions"][0]["task"] == "<CAPTION>"
