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


OPERATOR = {"max_images": 12, "max_total_pixels": 3_000_000, "max_text_chars": 1500}


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
    # the operator's limits, set at deploy time over the logged ones
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri, SERVING_MODEL_CONFIG=json.dumps(OPERATOR),
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
    yield url, reg, server
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
    url, *_ = served
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
    url, *_ = served
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


def _encoded(img, fmt, **kw) -> str:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def _fuzz_corpus():
    """(name, body, expected status range, text the answer must contain)."""
    import random

    rng = random.Random(7)
    ok = Image.new("RGB", (64, 48), (10, 200, 10))
    png = base64.b64decode(_b64(ok))
    rows = lambda *r: {"dataframe_records": list(r)}  # noqa: E731
    corpus = [
        ("tiff", rows({"image": _encoded(ok, "TIFF"), "task": "<OD>"}), "not accepted"),
        ("gif", rows({"image": _encoded(ok, "GIF"), "task": "<OD>"}), "not accepted"),
        ("ico", rows({"image": _encoded(ok, "ICO"), "task": "<OD>"}), "not accepted"),
        ("truncated png", rows({"image": base64.b64encode(png[: len(png) // 2]).decode(), "task": "<OD>"}), "request 0"),
        ("random bytes", rows({"image": base64.b64encode(rng.randbytes(3000)).decode(), "task": "<OD>"}), "not an image"),
        ("no image", rows({"task": "<OD>"}), "image"),
        ("no task", rows({"image": _b64(ok)}), "task"),
        ("text too long", rows({"image": _b64(ok), "task": "<CAPTION_TO_PHRASE_GROUNDING>", "text": "x" * 5000}),
         "limit is 1500"),
        ("prompt over the positions", rows({"image": _b64(ok), "task": "<CAPTION_TO_PHRASE_GROUNDING>",
                                            "text": " ".join(f"w{k}" for k in range(700))[:1490]}), "reads at most"),
        ("region of 2", rows({"image": _b64(ok), "task": "<REGION_TO_CATEGORY>", "region": "[1, 2]"}), "4 finite numbers"),
        ("region of words", rows({"image": _b64(ok), "task": "<REGION_TO_CATEGORY>", "region": '["a","b","c","d"]'}),
         "4 numbers"),
        ("region NaN", rows({"image": _b64(ok), "task": "<REGION_TO_CATEGORY>", "region": "[NaN, 1, 2, 3]"}), "finite"),
        ("too many images", rows(*[{"image": _b64(ok), "task": "<CAPTION>"}] * 13), "limit is 12"),
        ("too many pixels", rows(*[{"image": _b64(Image.new("RGB", (1000, 800))), "task": "<CAPTION>"}] * 4),
         "limit is 3000000"),
        ("bomb", rows({"image": _b64(Image.new("1", (9000, 9000))), "task": "<OD>"}), "limit is"),
        ("unicode task", rows({"image": _b64(ok), "task": "<ÖD>\u0000"}), "unknown task"),
        ("wrong column", rows({"img": _b64(ok), "task": "<OD>"}), ""),
        ("not json", b"\x00\xff{", ""),
    ]
    return corpus


def test_fuzzed_requests_get_short_4xx_and_the_server_keeps_serving(served):
    """Every request of the corpus gets a 4xx (a budget: 429) with a short message naming the reason,
    no stack trace and no local path; the server's memory stays bounded and it keeps answering."""
    import psutil

    url, _, server = served
    seen = []
    for name, body, message in _fuzz_corpus():
        status, out = _post(url, body, raw=isinstance(body, bytes))
        text = json.dumps(out)
        seen.append((name, status))
        assert 400 <= status < 500, (name, status, text[:500])
        assert message in text, (name, text[:500])
        assert "stack_trace" not in out and "Traceback" not in text and "site-packages" not in text, (name, text[:500])
        assert len(text) < 20_000, (name, len(text))
    assert dict(seen)["too many images"] == 429 and dict(seen)["too many pixels"] == 429
    rss = sum(p.memory_info().rss for p in [psutil.Process(server.pid)] + psutil.Process(server.pid).children(True))
    assert rss < 4 * 2**30, rss
    ok, out = _post(url, {"dataframe_records": [{"image": _b64(Image.new("RGB", (32, 32))), "task": "<CAPTION>"}]})
    assert ok == 200 and out["predictions"][0]["task"] == "<CAPTION>"


def test_a_request_past_its_deadline_stops_with_504(tmp_path):
    """The deadline stops the work (here 0 s: at the first checkpoint) and maps to 504; the limits
    come from the model config, unknown names are refused."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from florence2 import modeling
    from florence2.pyfunc import Florence2PyFunc, ServingLimits
    from florence_fixtures import tiny

    model, proc = tiny()
    modeling.save(model, proc, tmp_path / "m")
    pf = Florence2PyFunc()
    pf.load_context(SimpleNamespace(artifacts={"model_dir": str(tmp_path / "m")}, model_config={"deadline_s": 0}))
    import pandas as pd

    req = pd.DataFrame([{"image": _b64(Image.new("RGB", (32, 32))), "task": "<CAPTION>"}])
    with pytest.raises(MlflowException, match="deadline passed") as e:
        pf.predict(None, req)
    assert e.value.get_http_status_code() == 504
    with pytest.raises(ValueError, match="unknown serving limits"):
        ServingLimits.from_config({"max_imagez": 3})
