"""Training: Petastorm over a pinned Delta version, Horovod (Gloo) vs one process, resume, MLflow."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lakehouse.examples import build_training_examples, example_rows, write_training_examples
from lakehouse.ingest import run_ingest
from florence2.recipe import ShortReadError, check_count
from lakehouse.reader import delta_slice, example_batches, image_decoder, iterate_rows, make_reader
from lakehouse.rounds import RoundConfig, run_round
from lakehouse.synthetic import write_world
from lakehouse.tables import read

ROOT = Path(__file__).resolve().parents[1]
FAST_ROUND = [{"type": "rapidocr"}, {"type": "contours"}]


@pytest.fixture(scope="module")
def pinned(spark, tmp_path_factory):
    """A tiny world through round 1 and into training_examples; data.json for the recipe."""
    from florence2.tokenization import build_tokenizer
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path_factory.mktemp("train") / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=12, seed=4, bad_inputs=False)
    run_ingest(spark, s, log=None)
    run_round(spark, s, RoundConfig(round=1, specialists=FAST_ROUND), log=lambda *a: None)
    root = s.tables
    mixture = {"<OD>": 1.0, "<CAPTION>": 1.0, "<OCR>": 1.0}
    mixture.update({t: 0.0 for t in __import__("florence2.tasks", fromlist=["TASKS"]).TASKS if t not in mixture})
    v = write_training_examples(spark, root, build_training_examples(spark, root, 1, None, mixture, 0.2), {"test": 1})
    sl = delta_slice(spark, root, v, "train")
    ex = example_rows(read(spark, root, "training_examples", version=v))
    tok_dir = s.home / "tok"
    build_tokenizer([r.target for r in ex.collect()], vocab_size=800).save_pretrained(str(tok_dir))
    data = {"files": list(sl.files), "rows": sl.rows, "images": sl.images, "version": v, "split": "train",
            "tokenizer": str(tok_dir)}
    (s.home / "data.json").write_text(json.dumps(data))
    return s, root, v, sl, data


def test_examples_split_by_image_and_mixture(spark, pinned):
    s, root, v, sl, _ = pinned
    table = read(spark, root, "training_examples", version=v)
    ex = example_rows(table)
    assert {r.task for r in ex.select("task").distinct().collect()} == {"<OD>", "<CAPTION>", "<OCR>"}
    # one row per image, its bytes once, however many examples it has
    assert table.count() == table.select("image_id").distinct().count() == 12
    assert ex.count() == sum(r.n_examples for r in table.collect()) > table.count()
    assert {r.split for r in table.collect()} == {"train", "val"}
    assert sl.rows == ex.filter("split = 'train'").count() and sl.images == table.filter("split = 'train'").count()
    assert ex.select("example_id").distinct().count() == ex.count()


def test_petastorm_reads_exactly_the_pinned_version(spark, pinned):
    s, root, v, sl, data = pinned
    rows, shapes, decoded = [], set(), []
    decode = image_decoder(64, (0.5,) * 3, (0.5,) * 3)

    def counting(contents):
        decoded.extend(contents)
        return decode(contents)

    with make_reader(sl, pool="process", workers=2) as reader:
        for pixels, batch in example_batches(iterate_rows(reader), 8, counting, pool_images=6):
            rows += batch
            shapes.add(pixels.shape[1:])
            assert len(pixels) == len(batch)
    assert len(rows) == sl.rows and shapes == {(3, 64, 64)}
    assert len(decoded) == sl.images  # each image decoded once, not once per example
    ids = [r["example_id"] for r in rows]
    train = example_rows(read(spark, root, "training_examples", version=v).filter("split = 'train'"))
    assert sorted(ids) == sorted(r.example_id for r in train.collect())
    # a batch mixes images: in table order 8 consecutive examples were one or two images' tasks
    image_of = {r.example_id: r.image_id for r in train.collect()}
    windows = [{image_of[r["example_id"]] for r in rows[i:i + 8]} for i in range(0, len(rows) - 7, 8)]
    assert sum(len(w) for w in windows) / len(windows) >= 3, [len(w) for w in windows]
    # a newer version does not leak into the pinned file list
    write_training_examples(spark, root, read(spark, root, "training_examples", version=v).limit(3), {"test": 2})
    assert delta_slice(spark, root, v, "train") == sl
    with pytest.raises(ShortReadError, match="read 5 examples, the Delta version holds 7"):
        check_count(5, 7, "epoch 0")


def test_example_batches_draw_every_example_once_from_a_pool_of_decoded_images():
    """The reader's sampling alone (no Spark): 40 images with 1-5 examples each, a pool of 8."""
    rows = [{"image_id": f"i{k}", "content": k, "examples": json.dumps(
        [{"example_id": f"{k}-{j}", "prompt": "p", "target": "t"} for j in range(1 + k % 5)])} for k in range(40)]
    calls = []

    def decode(contents):
        calls.append(list(contents))
        return [f"px{c}" for c in contents]

    batches = list(example_batches(iter(rows), 6, decode, threads=2, pool_images=8, seed=3))
    drawn = [(img, e["example_id"]) for imgs, exs in batches for img, e in zip(imgs, exs)]
    assert sorted(e for _, e in drawn) == sorted(f"{k}-{j}" for k in range(40) for j in range(1 + k % 5))
    assert all(img == f"px{e.split('-')[0]}" for img, e in drawn)  # each example with its own image
    assert sorted(c for call in calls for c in call) == list(range(40))  # every image decoded once
    assert all(len(exs) == 6 for _, exs in batches[:-1]) and 1 <= len(batches[-1][1]) <= 6
    assert sum(len(set(imgs)) for imgs, _ in batches) / len(batches) >= 4  # batches mix images
    again = list(example_batches(iter(rows), 6, decode, threads=2, pool_images=8, seed=3))
    assert [[e["example_id"] for e in exs] for _, exs in again] == [[e["example_id"] for e in exs] for _, exs in batches]


def _recipe(data_path, out, *over, np_=1, timeout=900, **popen):
    base = [sys.executable, "-m", "lakehouse.training", "--data", str(data_path), f"output_dir={out}", "seed=0",
            "lr=0.001", "warmup_steps=2", "checkpoint_every=0", "log_every=1", "reader_pool=dummy", *over]
    cmd = ([str(Path(sys.executable).with_name("horovodrun")), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo"] + base) if np_ > 1 else base
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, **popen)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _params(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_horovod_two_processes_equal_one_process_with_twice_the_batch(pinned, tmp_path):
    s, *_ = pinned
    data = s.home / "data.json"
    # the anti-collapse term is a statistic of each rank's batch, so equality holds without it
    # (the region terms are per-example means, like the task loss, and stay on); fixed order: the tolerance
    # below is Adam's sign noise on these 3 batches (a shuffled epoch's ranks share one permutation:
    # tests/test_learning.py::test_the_files_source_mixes_images_in_a_batch_and_reads_every_example_once)
    opts = ("source=files", "max_steps=3", "image_variance=0", "shuffle=false")
    _recipe(data, tmp_path / "hvd", *opts, "batch_size=2", np_=2)
    _recipe(data, tmp_path / "one", *opts, "batch_size=4")
    a, b = _params(tmp_path / "hvd" / "model"), _params(tmp_path / "one" / "model")
    start = _params_fresh(s)
    assert a.keys() == b.keys()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a if k in start)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    # Adam's first steps are sign-like (m / sqrt(v) ~ +-1), so float noise in near-zero gradients moves a
    # parameter by up to ~lr; the exact decomposition is checked without Horovod below
    assert moved > 1e-3 and diff < 2e-4, (moved, diff)


def test_config_overrides_parse_numbers_and_name_bad_keys():
    from florence2.recipe import load_config
    from lakehouse.training import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG, ["lr=2e-3", "max_minutes=1e1", "warmup_steps=150", "region_edges=true"])
    assert (cfg.lr, cfg.max_minutes, cfg.warmup_steps, cfg.region_edges) == (0.002, 10.0, 150, True)
    with pytest.raises(SystemExit, match="config key lr takes a number"):
        load_config(None, ["lr=fast"])
    with pytest.raises(SystemExit, match="unknown config keys: \\['lrate'\\]"):
        load_config(None, ["lrate=0.1"])


def test_objective_decomposes_over_examples():
    """The recipe's objective on a batch equals the mean of its halves' objectives, gradients included:
    what makes averaging Horovod ranks equal to one process (task loss and region terms)."""
    import io

    import torch
    from PIL import Image

    from florence2 import modeling, recipe
    from lakehouse.synthetic import synthetic_rows
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    rows = synthetic_rows(6, 5, ["<OD>", "<CAPTION>"])[:4]
    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    model.set_attn_implementation("eager")
    cfg, loc = recipe.Config(image_variance=0), modeling.loc_token_range(tok)

    def grads(rs):
        pix = torch.as_tensor(proc.preprocess([Image.open(io.BytesIO(r["content"])) for r in rs]))
        model.zero_grad()
        total, _ = recipe.step_loss(model, proc.batch([], [r["prompt"] for r in rs], [r["target"] for r in rs])
                                    | {"pixel_values": pix}, cfg, loc)
        total.backward()
        return total.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (t4, g4), (ta, ga), (tb, gb) = grads(rows), grads(rows[:2]), grads(rows[2:])
    assert {r["task"] for r in rows} == {"<OD>", "<CAPTION>"}
    assert abs(t4 - (ta + tb) / 2) < 1e-5 * abs(t4)
    assert float((g4 - (ga + gb) / 2).norm() / g4.norm()) < 1e-5


def test_efficiency_options_keep_the_loss():
    """Issue 11's training options (fused AdamW, length buckets, a compiled model, no per-step sync)
    give the plain step's loss on a fixed batch, step after step (fp32).  The compiled model here uses
    the aot_eager backend: the same captured graphs and autograd as inductor without its C++ code
    generation, which takes minutes on this CPU; inductor itself runs in bench/train_throughput.py."""
    import io

    import torch
    from PIL import Image

    from florence2 import modeling, recipe
    from lakehouse.synthetic import synthetic_rows

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    rows = synthetic_rows(4, 5, ["<OD>", "<CAPTION>", "<OCR_WITH_REGION>"])[:6]
    tok = tokenizer()
    images = [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in rows]

    def losses(**options):
        torch.manual_seed(0)
        model, proc = modeling.create("tiny", tok)
        cfg = recipe.Config(**options)
        model.set_attn_implementation("eager")
        if cfg.compile:
            model.compile(backend=cfg.compile_backend)
        model.train()
        opt, loc, out = recipe.make_optimizer(model, cfg, "cpu"), modeling.loc_token_range(tok), []
        for _ in range(3):
            inputs, regions = recipe.prepare_batch(proc, images, [r["prompt"] for r in rows],
                                                   [r["target"] for r in rows], cfg, model.config, loc, "cpu")
            total, _ = recipe.step_loss(model, inputs, cfg, loc, regions)
            opt.zero_grad()
            total.backward()
            opt.step()
            out.append(total.detach())
        return [float(x) for x in out], inputs

    plain, plain_inputs = losses(pad_multiple=1, fused_adamw="false")
    fast, fast_inputs = losses(pad_multiple=8, fused_adamw="true", compile=True, compile_backend="aot_eager")
    assert fast_inputs["labels"].shape[1] % 8 == 0 and fast_inputs["labels"].shape[1] > plain_inputs["labels"].shape[1]
    assert plain[0] > plain[2]  # it trains
    assert all(abs(a - b) < 1e-5 * abs(a) for a, b in zip(plain, fast)), (plain, fast)


def test_compiled_training_resumes_from_checkpoint(pinned, tmp_path):
    s, *_ = pinned
    out = tmp_path / "run"
    opts = ["source=files", "batch_size=2", "checkpoint_every=2", "compile=true", "compile_backend=aot_eager",
            "fused_adamw=true"]
    _recipe(s.home / "data.json", out, *opts, "max_steps=2")
    r = _recipe(s.home / "data.json", out, *opts, "max_steps=4")
    assert "resumed from" in r.stdout and "step-0000002" in r.stdout
    assert json.loads((out / "result.json").read_text())["steps"] == 4


def _params_fresh(s):
    from florence2 import modeling
    from florence2.tokenization import load_tokenizer

    model, _ = modeling.create("tiny", load_tokenizer(json.loads((s.home / "data.json").read_text())["tokenizer"]), seed=0)
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_killed_training_resumes_from_checkpoint(pinned, tmp_path):
    s, *_ = pinned
    out = tmp_path / "run"
    proc = _recipe(s.home / "data.json", out, "source=files", "batch_size=2", "max_steps=12", "checkpoint_every=4",
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "checkpoints").glob("step-0000004")):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (out / "result.json").exists()
    r = _recipe(s.home / "data.json", out, "source=files", "batch_size=2", "max_steps=12", "checkpoint_every=4")
    assert "resumed from" in r.stdout and "step-0000004" in r.stdout or "step-0000008" in r.stdout
    assert json.loads((out / "result.json").read_text())["steps"] == 12


def test_petastorm_source_trains_and_counts_every_row(pinned, tmp_path):
    s, _, _, sl, _ = pinned
    # enough steps for a whole epoch, so the per-epoch row count is checked
    steps = sl.rows // 2 + 1
    _recipe(s.home / "data.json", tmp_path / "pet", "source=petastorm", "reader_pool=process", "batch_size=2",
                f"max_steps={steps}", "epochs=1")
    res = json.loads((tmp_path / "pet" / "result.json").read_text())
    assert res["epochs"] == 1 and res["steps"] == sl.rows // 2


@pytest.fixture(scope="module")
def tracked(pinned):
    """One run of the training job: MLflow run, pyfunc model registered as florence2@candidate."""
    from florence2.recipe import load_config
    from lakehouse.training import DEFAULT_CONFIG, run_training

    s, root, v, _, _ = pinned
    return run_training(s, load_config(DEFAULT_CONFIG, ["max_steps=2", "batch_size=2", "reader_pool=dummy"]),
                        examples_version=v, run_name="tracked")


def test_train_job_tracks_dataset_gate_and_registers(pinned, tracked):
    import mlflow

    from lakehouse.tracking import configure_mlflow

    s, root, v, _, _ = pinned
    out = tracked
    configure_mlflow(s)
    run = mlflow.get_run(out["run_id"])
    assert run.data.tags["fld.round"] == "1" and run.data.tags["fld.examples_version"] == str(v)
    assert run.data.tags["fld.gate_success"] == "True"
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == f"training_examples@v{v}"
    src = json.loads(inputs[0].dataset.source)
    assert str(src.get("delta_table_version")) == str(v) and src.get("path", "").endswith("training_examples")
    art = mlflow.artifacts.load_dict(f"runs:/{out['run_id']}/quality/gate_result.json")
    assert art["annotations"]["success"] and art["gold"]["success"]
    mv = mlflow.MlflowClient().get_model_version_by_alias("florence2", "candidate")
    assert mv.run_id == out["run_id"]
    # the served model's limits are params of the run too, none colliding with the recipe's
    assert run.data.params["batch_size"] == "2" and run.data.params["predict_batch_size"] == "8"


def test_a_curriculum_pins_its_first_phase_then_the_whole_mixture_resumes_it(spark, pinned, capsys):
    import mlflow

    from florence2.recipe import load_config
    from lakehouse.tracking import configure_mlflow
    from lakehouse.training import DEFAULT_CONFIG, run_training

    s, root, v, _, _ = pinned
    cfg = load_config(DEFAULT_CONFIG, ["max_minutes=0.2", "max_steps=1000000", "epochs=1000", "batch_size=2",
                                       "reader_pool=dummy", "log_every=1000"])
    with pytest.raises(SystemExit, match="first phase '<OD>=0.5'"):  # longer than the run: refused before any work
        run_training(s, cfg, examples_version=v, first="<OD>=0.5", register=None)
    out = run_training(s, cfg, examples_version=v, run_name="curriculum", first="<OD>=0.05", register=None)
    printed = capsys.readouterr().out
    first_v = out["first_phase_examples_version"]
    assert out["examples_version"] == v and first_v > v
    tasks = {r.task for r in example_rows(read(spark, root, "training_examples", version=first_v))
             .select("task").distinct().collect()}
    assert tasks == {"<OD>"}
    phase1 = out["result"]["first_phase"]
    assert phase1["steps"] > 0 and out["result"]["steps"] > phase1["steps"]
    assert f"resumed from {Path(out['model_dir']).parent / 'checkpoints'}" in printed
    configure_mlflow(s)
    run = mlflow.get_run(out["run_id"])
    assert run.data.tags["fld.first_phase_examples_version"] == str(first_v)
    assert {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in run.inputs.dataset_inputs} >= {
        (f"training_examples@v{first_v}", "training:first_phase"), (f"training_examples@v{v}", "training")}
    # a first phase with fewer examples than one batch would spin without a step: skipped, and said so
    big = load_config(DEFAULT_CONFIG, ["max_minutes=0.05", "max_steps=1000000", "epochs=1000", "batch_size=100000",
                                       "reader_pool=dummy"])
    out = run_training(s, big, examples_version=v, run_name="curriculum-skip", first="<OD>=0.01", register=None)
    assert "phase 1 skipped: <OD>=0.01 has" in capsys.readouterr().out
    assert "first_phase" not in out["result"] and out["first_phase_examples_version"] is None


def test_horovod_spark_run_from_the_job(pinned):
    from florence2.recipe import load_config
    from lakehouse.training import DEFAULT_CONFIG, run_training

    s, root, v, _, _ = pinned
    out = run_training(s, load_config(DEFAULT_CONFIG, ["max_steps=2", "batch_size=2", "reader_pool=dummy"]),
                       examples_version=v, run_name="spark", launcher="spark", np_=2, register=None)
    assert out["result"]["steps"] == 2 and Path(out["model_dir"], "model.safetensors").exists()


def test_evaluate_logs_metrics_and_champion_moves_only_when_beaten(pinned, tracked):
    import mlflow

    from lakehouse.evaluation import evaluate, fresh_scenes
    from lakehouse.tracking import configure_mlflow, promote

    s, root, v, _, _ = pinned
    configure_mlflow(s)
    client = mlflow.MlflowClient()
    cand = client.get_model_version_by_alias("florence2", "candidate")
    res = evaluate(s, "models:/florence2@candidate", v, limit=20, synthetic_referring=True)
    res["promoted"] = promote("florence2", "models:/florence2@candidate", res["score"])
    val = res["val"]
    assert {"cider", "od_mAP", "ocr_cer", "res_miou", "rec_accuracy"} <= set(val["model"])
    assert set(val["model"]) == set(val["baseline"])
    assert res["promoted"] and client.get_model_version_by_alias("florence2", "champion").version == cand.version
    run = mlflow.get_run(res["run_id"])
    assert "val.od_mAP" in run.data.metrics and "val.baseline.cider" in run.data.metrics
    # the registered model through MLflow's pyfunc, on scenes generated from another seed
    fresh = fresh_scenes("models:/florence2@candidate", 3, 777)
    assert fresh["examples"] == {"<OD>": 3} and set(fresh["model"]) == set(fresh["baseline"]) >= {"od_AP50", "od_mAP"}
    # a champion with a better recorded score keeps the alias
    client.set_model_version_tag("florence2", cand.version, "fld.eval_score", "999")
    assert promote("florence2", "models:/florence2@candidate", 0.5) is False
    assert client.get_model_version_by_alias("florence2", "champion").version == cand.version


def test_augmentation_moves_the_od_examples_of_a_batch_and_nothing_else(pinned, tmp_path):
    """`augment` and `zoom_out`: moves are drawn for <OD> examples only; the batch the model sees is the batch of the
    moved images and targets (region supervision included), and the recipe trains with it."""
    import io
    import random

    import torch
    from PIL import Image

    from florence2 import augment, modeling, recipe
    from lakehouse.synthetic import synthetic_rows

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    rows = synthetic_rows(3, 5, ["<OD>", "<CAPTION>", "<OCR_WITH_REGION>"])
    prompts, targets = [r["prompt"] for r in rows], [r["target"] for r in rows]
    drawn = [recipe.draw_moves(random.Random(s), prompts, "dihedral") for s in range(20)]
    od = [i for i, r in enumerate(rows) if r["task"] == "<OD>"]
    assert all(not d[i] for d in drawn for i in range(len(rows)) if i not in od)
    assert {d[i].k for d in drawn for i in od} == set(range(8)) and all(d[i].scale == 1 for d in drawn for i in od)
    assert {d[i].k for d in (recipe.draw_moves(random.Random(s), prompts, "hflip") for s in range(20)) for i in od} == {0, 1}
    assert recipe.draw_moves(random.Random(0), prompts, "none") is None
    zoomed = [recipe.draw_moves(random.Random(s), prompts, "none", 0.5) for s in range(20)]
    assert all(not d[i] for d in zoomed for i in range(len(rows)) if i not in od)
    scales = [d[i].scale for d in zoomed for i in od]
    assert all(0.5 <= x <= 1 for x in scales) and min(scales) < 0.6 and {d[i].k for d in zoomed for i in od} == {0}

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    cfg, loc = recipe.Config(), modeling.loc_token_range(tok)
    images = [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in rows]
    sym = [augment.Move(3, 0.7, 0.2, 0.9) if i in od else augment.Move() for i in range(len(rows))]
    got, got_regions = recipe.prepare_batch(proc, images, prompts, targets, cfg, model.config, loc, "cpu", sym)
    pixels = torch.stack([augment.pixels(p, k) for p, k in zip(torch.as_tensor(proc.preprocess(images)), sym)])
    want, want_regions = recipe.prepare_batch(proc, pixels.numpy(), prompts,
                                              [augment.od_target(t, k, pixels.shape[-1]) for t, k in zip(targets, sym)], cfg,
                                              model.config, loc, "cpu")
    plain, _ = recipe.prepare_batch(proc, images, prompts, targets, cfg, model.config, loc, "cpu")
    for k in ("pixel_values", "input_ids", "labels"):
        assert torch.equal(got[k], want[k]), k
    for k, v in want_regions.items():
        assert torch.equal(got_regions[k], v) if torch.is_tensor(v) else got_regions[k] == v, k
    assert not torch.equal(got["labels"], plain["labels"])  # the <OD> targets moved
    others = [i for i in range(len(rows)) if i not in od]
    assert torch.equal(got["pixel_values"][others], plain["pixel_values"][others])

    s, *_ = pinned
    out = tmp_path / "run"
    _recipe(s.home / "data.json", out, "source=files", "batch_size=2", "max_steps=2", "augment=dihedral", "zoom_out=0.6")
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    bad = subprocess.run([sys.executable, "-m", "lakehouse.training", "--data", str(s.home / "data.json"),
                          f"output_dir={tmp_path / 'bad'}", "augment=rotate"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "augment='rotate': expected one of ['dihedral', 'hflip', 'none']" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "lakehouse.training", "--data", str(s.home / "data.json"),
                          f"output_dir={tmp_path / 'bad'}", "zoom_out=1.5"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "zoom_out=1.5: expected the smallest scale, in (0, 1]" in bad.stderr


def test_a_run_of_od_alone_gets_a_tokenizer_that_holds_its_label_words(spark, pinned, tmp_path):
    # training_tokenizer once left every target with a location token out of its corpus: a run of <OD> alone
    # learned no label ('square' as six letters)
    import re

    from florence2.tasks import TASKS
    from florence2.tokenization import load_tokenizer
    from lakehouse.training import training_tokenizer

    s, root, _, _, _ = pinned
    only_od = {t: 0.0 for t in TASKS} | {"<OD>": 1.0}
    v = write_training_examples(spark, root, build_training_examples(spark, root, 1, None, only_od, 0.2), {"test": 2})
    targets = [r.target for r in example_rows(read(spark, root, "training_examples", version=v)).collect()]
    labels = {w for t in targets for w in re.findall(r"([^<>]+)<loc_", t)}
    assert labels and all(t.count("<loc_") for t in targets)
    tok = load_tokenizer(training_tokenizer(spark, root, v, tmp_path / "tok"))
    assert {w: len(tok(w, add_special_tokens=False)["input_ids"]) for w in labels} == {w: 1 for w in labels}
