"""``cimagenet``: class pairs tiled from a per-seed order, epochs, zeroed head, held-out test accuracy,
and the user path ``data import imagenet32`` -> ``run --task cimagenet`` on official-format files."""

from __future__ import annotations

import dataclasses
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.data.imagenet32 import import_reference_archive, load_imagenet32_store
from plastibench.data.paths import DataUnavailable
from plastibench.engine import Engine
from plastibench.method import Method
from plastibench.registry import METHODS, TASKS
from plastibench.results import read_metrics, run_config, summarise

CPU = torch.device("cpu")
SMOKE = TASKS.get("cimagenet").protocol("smoke")


def make_task(data_dir, seeds=(0, 1, 2), protocol=SMOKE):
    return TASKS.get("cimagenet")(protocol, torch.tensor(seeds), data_dir=data_dir, verify=False)


def store_images(data_dir) -> torch.Tensor:
    store = load_imagenet32_store(data_dir, verify=False)
    return torch.from_numpy(np.stack([store.images(c) for c in store.classes]))


def test_task_t_uses_the_pair_2t_2t_plus_1_of_the_tiled_order(tiny_imagenet32):
    task = make_task(tiny_imagenet32)
    n = task.order.shape[1]
    assert n == 5 and all(sorted(row.tolist()) == list(range(5)) for row in task.order)
    assert not torch.equal(task.order[0], task.order[1])  # each seed its own order
    for t in (0, 1, 2, 7):
        task.start_task(t)
        want = torch.stack([task.order[:, (2 * t) % n], task.order[:, (2 * t + 1) % n]], 1)
        assert torch.equal(task.pair, want)
    # with 5 classes task 2 pairs the last class with the first: the tiling of the reference
    task.start_task(2)
    assert torch.equal(task.pair, task.order[:, [4, 0]])


def batch_at(task, t, step):
    """The batch of in-task step ``step`` as the engine gets it: the segment set up on the host,
    then the step read as a device tensor."""
    task.start_segment(t, step)
    return task.batch(t, torch.tensor(step))


def test_an_epoch_shows_every_training_image_once_with_its_label(tiny_imagenet32):
    task = make_task(tiny_imagenet32)
    images = store_images(tiny_imagenet32).float() * (1 / 255)
    task.start_task(1)
    per_epoch = 2 * 20 // SMOKE.batch_size
    xs, ys = zip(*(batch_at(task, 1, step) for step in range(per_epoch)))
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    for s in range(3):
        pair = task.pair[s]
        expected = torch.cat([images[pair[0], :20], images[pair[1], :20]])
        # the same 40 images, each once, in a shuffled order, with label = position in the pair
        assert sorted(map(tuple, x[s].flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
        for label in (0, 1):
            got = x[s][y[s] == label].flatten(1)
            want = images[pair[label], :20].flatten(1)
            assert torch.equal(torch.sort(got.sum(1)).values, torch.sort(want.sum(1)).values)
    second = torch.cat([batch_at(task, 1, step)[1] for step in range(per_epoch, 2 * per_epoch)], 1)
    assert not torch.equal(second, y)  # reshuffled every epoch


class RecordHead(Method):
    """Backprop that records the output layer's |W| + |b| when each task starts."""

    seen: list = []

    def on_task_start(self, task_index):
        head = self.run.net.fc3
        RecordHead.seen.append((head.weight.abs().sum() + head.bias.abs().sum()).item())


def run(data_dir, method_cls, hparams=None, protocol=SMOKE, seeds=(0, 1), tmp=None):
    engine = Engine(method_cls, hparams or {}, TASKS.get("cimagenet"), protocol, list(seeds), device=CPU,
                    directory=tmp, config=run_config("bp", hparams or {}, protocol, list(seeds)),
                    data_dir=data_dir, verify=False)
    engine.run()
    return engine


def test_the_head_is_zeroed_at_every_task_start_and_then_learns(tiny_imagenet32, tmp_path):
    RecordHead.seen = []
    engine = run(tiny_imagenet32, RecordHead, tmp=tmp_path)
    assert RecordHead.seen == [0.0, 0.0, 0.0]
    assert engine.net.fc3.weight.abs().sum() > 0


def test_metric_is_test_accuracy_on_the_held_out_rows(tiny_imagenet32):
    task = make_task(tiny_imagenet32, seeds=(0, 1))
    net = task.network()
    images = store_images(tiny_imagenet32).float() * (1 / 255)
    task.start_task(3)
    got = task.end_task(3, net)
    for s in range(2):
        net_s_correct = 0
        for label in (0, 1):
            x = images[task.pair[s, label], 600:620]  # test rows start at 600
            full = x.unsqueeze(0).expand(2, -1, -1, -1, -1)
            with torch.no_grad():
                out, _ = net(full)
            net_s_correct += (out[s].argmax(-1) == label).sum().item()
        assert got[s].item() == pytest.approx(net_s_correct / 40)


def test_backprop_learns_separable_pairs(tiny_imagenet32, tmp_path):
    longer = dataclasses.replace(SMOKE, n_tasks=2, steps_per_task=120)
    engine = run(tiny_imagenet32, METHODS.get("bp"), protocol=longer, tmp=tmp_path)
    assert np.all(engine.records[-1]["test_accuracy"] >= 0.9), engine.records


def test_the_reference_class_order_is_used_when_it_covers_the_store(tiny_imagenet32):
    task = make_task(tiny_imagenet32, seeds=(0, 4))
    ref = np.stack([np.random.default_rng(r).permutation(5) for r in range(3)])
    store = SimpleNamespace(classes=(0, 1, 2, 3, 4), class_order=ref)
    order, source = task._class_order(store, True)
    assert source == "reference class_order[seed]"
    assert order.tolist() == [ref[0].tolist(), ref[4 % 3].tolist()]
    _, source = task._class_order(SimpleNamespace(classes=(0, 1, 2, 3, 7), class_order=ref), True)
    assert source == "permutation keyed by seed"


# --------------------------------------------------------------------------------------------
# the user path, through the CLI
# --------------------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_import_then_run_bp_and_cbp_on_the_smoke_protocol(tmp_path, imagenet32_writer):
    root = imagenet32_writer(tmp_path, n_classes=4)  # also writes the official-format source
    data = tmp_path / "fresh"
    result = invoke("data", "import", "imagenet32", str(tmp_path / "imagenet32-src"), "--data-dir", str(data),
                    "--no-verify")
    assert result.exit_code == 0, result.output
    assert (data / "imagenet32" / "manifest.json").is_file() and root.exists()
    result = invoke("run", "--method", "bp,cbp", "--task", "cimagenet", "--protocol", "smoke", "--seeds", "0-1",
                    "--device", "cpu", "--data-dir", str(data), "--no-verify", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    summaries = sorted((tmp_path / "runs").rglob("summary.yaml"))
    assert len(summaries) == 2
    env = yaml.safe_load((summaries[0].parent / "environment.yaml").read_text())
    record = env["data"]["imagenet32"]
    assert record["classes"] == 4 and record["verified"] is False and record["input_transform"] == "div255"


def test_missing_store_exits_1_naming_the_import_commands(tmp_path):
    result = invoke("run", "--method", "bp", "--task", "cimagenet", "--protocol", "smoke", "--device", "cpu",
                    "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "Traceback" not in text and "plastibench data import imagenet32" in text
    assert "image-net.org" in text


# --------------------------------------------------------------------------------------------
# inputs: the protocol's input_transform, checked against the store and recorded (issue 11 item 5)
# --------------------------------------------------------------------------------------------

def archive_of(tiny_root, tmp_path, values) -> tuple:
    """A reference-archive store holding ``values(x)`` of the tiny store's uint8 images, and those arrays."""
    src = tmp_path / "archive-src"
    (src / "classes").mkdir(parents=True)
    images = store_images(tiny_root).numpy()
    for c, x in enumerate(images):
        np.save(src / "classes" / f"{c}.npy", values(x))
    import_reference_archive(src, tmp_path / "archive")
    return tmp_path / "archive", np.stack([values(x) for x in images])


def with_transform(protocol, name):
    return dataclasses.replace(protocol, settings={**protocol.settings, "input_transform": name})


def test_the_input_transform_is_a_hashed_protocol_setting():
    protocols = TASKS.get("cimagenet").protocols
    assert {n: p.settings["input_transform"] for n, p in protocols.items()} == {
        "paper": "div255", "short": "div255", "smoke": "div255",
        "paper-archive": "as_stored", "short-archive": "as_stored"}
    assert with_transform(SMOKE, "as_stored").hash != SMOKE.hash
    for name in ("paper", "short"):  # the -archive twin differs in its transform (and name) only
        twin = protocols[name + "-archive"]
        assert dataclasses.replace(twin, name=name, description=protocols[name].description) == \
            with_transform(protocols[name], "as_stored")
        assert twin.hash != protocols[name].hash


def fed_and_stored(task, arrays: torch.Tensor) -> tuple[set, set]:
    """The first batch's inputs, and the images of its classes' training rows, as sets of flat tuples."""
    task.start_task(0)
    x, y = batch_at(task, 0, 0)
    classes = task.pair.gather(1, y).flatten().tolist()
    per_class = task.protocol.settings["train_per_class"]
    return ({tuple(v.flatten().tolist()) for v in x.flatten(0, 1)},
            {tuple(arrays[c, r].flatten().tolist()) for c in set(classes) for r in range(per_class)})


def test_the_transform_is_applied_as_named_whatever_the_store_dtype(tiny_imagenet32, tmp_path):
    pixels = store_images(tiny_imagenet32)
    divided = pixels.float() * (1 / 255)
    for root in (tiny_imagenet32, archive_of(tiny_imagenet32, tmp_path / "a", lambda x: x.astype(np.float32))[0]):
        fed, stored = fed_and_stored(make_task(root), divided)  # uint8 store, float32 store of 0..255 pixels
        assert fed and fed <= stored
    centred, arrays = archive_of(tiny_imagenet32, tmp_path / "b", lambda x: (x / 255 - 0.4).astype(np.float32))
    fed, stored = fed_and_stored(make_task(centred, protocol=with_transform(SMOKE, "as_stored")),
                                 torch.from_numpy(arrays))
    assert fed <= stored and min(min(v) for v in fed) < 0  # fed unchanged


@pytest.mark.parametrize("protocol, values, words", [
    ("paper-archive", None, ["Protocol paper-archive", "'as_stored'", "[0, 2", "Imagenet32 official batches, uint8",
                             "protocol paper (input_transform 'div255'"]),
    ("paper", lambda x: (x / 255 - 0.4).astype(np.float32),
     ["Protocol paper has input_transform 'div255'", "reference archive, float32", "protocol paper-archive"]),
    ("smoke", lambda x: (x / 255).astype(np.float64), ["'div255'", "float64", "[0, 0.9"]),  # already scaled
])
def test_a_store_that_disagrees_with_the_transform_is_refused_saying_what_to_do(
        tiny_imagenet32, tmp_path, protocol, values, words):
    root = tiny_imagenet32 if values is None else archive_of(tiny_imagenet32, tmp_path, values)[0]
    with pytest.raises(DataUnavailable) as info:
        make_task(root, protocol=TASKS.get("cimagenet").protocol(protocol))
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "plastibench data import" in message


@pytest.fixture(scope="module")
def archive_run(tiny_imagenet32, tmp_path_factory):
    """bp on smoke, seeds 0-1, run through the CLI on a reference-archive store of float32 0..255
    pixels: (run directory, the store's arrays)."""
    tmp = tmp_path_factory.mktemp("archive-run")
    pixels, arrays = archive_of(tiny_imagenet32, tmp, lambda x: x.astype(np.float32))
    result = invoke("run", "--method", "bp", "--task", "cimagenet", "--protocol", "smoke", "--seeds", "0-1",
                    "--device", "cpu", "--data-dir", str(pixels), "--no-verify", "--out", str(tmp / "runs"))
    assert result.exit_code == 0, result.output
    return next((tmp / "runs").glob("cimagenet/smoke/bp-*")), arrays


def test_the_run_records_the_source_range_and_transform(tiny_imagenet32, archive_run):
    run_dir, arrays = archive_run
    archive = yaml.safe_load((run_dir / "environment.yaml").read_text())["data"]["imagenet32"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["imagenet32"] == archive  # the identity
    official = make_task(tiny_imagenet32).data_record()["imagenet32"]
    assert official["source"] == "Imagenet32 official batches" and archive["source"] == "reference archive"
    assert official["dtype"] == "uint8" and archive["dtype"] == "float32"
    used = arrays[:, np.r_[0:20, 600:620]]
    assert archive["value_range"] == official["value_range"] == [float(used.min()), float(used.max())]
    assert official["input_transform"] == archive["input_transform"] == "div255"


def test_run_with_a_mismatching_transform_exits_1_with_the_message(tiny_imagenet32, tmp_path):
    result = invoke("run", "--method", "bp", "--task", "cimagenet", "--protocol", "short-archive", "--seeds", "0",
                    "--device", "cpu", "--data-dir", str(tiny_imagenet32), "--no-verify", "--out", str(tmp_path))
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in text
    assert "protocol short (input_transform 'div255'" in text


# --------------------------------------------------------------------------------------------
# the score after a chosen task: the paper's backprop ran 2000 of the 5000 tasks (issue 11 item 6)
# --------------------------------------------------------------------------------------------

def test_the_score_after_task_2000_of_paper_is_the_mean_over_tasks_1801_to_2000():
    paper = TASKS.get("cimagenet").protocol("paper")
    g = np.random.default_rng(0)
    values = g.random((2500, 3))  # [task, seed]; tasks after 2000 must not count
    records = [{"test_accuracy": v} for v in values]
    config = run_config("bp", {}, paper, [0, 1, 2])
    at = summarise(config, paper, records, {}, 0.0, at_task=2000)
    assert at["per_seed"] == {s: pytest.approx(values[1800:2000, s].mean(), rel=1e-12) for s in range(3)}
    assert at["at_task"] == 2000 and "last 200 of the first 2000 of 5000 tasks" in at["aggregate"]


def test_compare_at_task_through_the_cli_on_finished_and_unfinished_runs(archive_run, tmp_path):
    bp = tmp_path / "runs" / "bp"
    shutil.copytree(archive_run[0], bp)
    # distinct per-task values, so that the window shows: seed s, task t -> (t + 1) / 4 + s / 100
    rows = (bp / "metrics.csv").read_text().splitlines()
    edited = [r if r.split(",")[2] != "test_accuracy" else
              ",".join([*r.split(",")[:3], repr((int(r.split(",")[1]) + 1) / 4 + int(r.split(",")[0]) / 100)])
              for r in rows]
    (bp / "metrics.csv").write_text("\n".join(edited) + "\n")
    unfinished = tmp_path / "unfinished"  # a run holding the tasks asked for is enough
    shutil.copytree(bp, unfinished)
    (unfinished / "summary.yaml").unlink()
    (unfinished / "metrics.csv").write_text("\n".join(r for r in edited if r.split(",")[1] != "2") + "\n")
    result = invoke("compare", str(bp), str(unfinished), "--at-task", "2", "--markdown")
    assert result.exit_code == 0, result.output
    assert "after task 2" in result.output and "last 1 of the first 2 of 3 tasks" in result.output
    table = [line for line in result.output.splitlines() if line.startswith("| preliminary |")]  # 2 seeds
    assert len(table) == 2 and all("| 0.5050 [" in row for row in table), table  # task 2: 0.5 and 0.51
    result = invoke("compare", str(bp), "--markdown")  # without --at-task: the protocol's own window
    assert result.exit_code == 0 and "| 0.7550 [" in result.output and "after task" not in result.output
    result = invoke("compare", str(bp), "--at-task", "4")
    assert result.exit_code == 1 and "from 1 to 3, not 4" in " ".join(result.output.split())
    result = invoke("compare", str(unfinished), "--at-task", "3")
    assert result.exit_code == 1 and "does not hold test_accuracy for the first 3 tasks" in \
        " ".join(result.output.split())


def test_the_first_tasks_of_a_run_are_the_run_of_that_length(tiny_imagenet32, tmp_path):
    """What makes the score after task 2000 of paper the score of the paper's 2000-task runs: the
    stream's prefix does not depend on n_tasks (every per-task value, diagnostics included, agrees)."""
    runs = {}
    for n in (3, 2):
        protocol = dataclasses.replace(SMOKE, n_tasks=n)
        Engine(METHODS.get("bp"), {}, TASKS.get("cimagenet"), protocol, [0, 1], device=CPU,
               directory=tmp_path / str(n), config=run_config("bp", {}, protocol, [0, 1]),
               data_dir=tiny_imagenet32, verify=False).run()
        runs[n] = read_metrics(tmp_path / str(n) / "metrics.csv")
    assert len(runs[3]) > 3 and runs[3].keys() == runs[2].keys()
    for name, per_seed in runs[2].items():
        for seed, values in per_seed.items():
            assert len(values) == 2 and np.array_equal(values, runs[3][name][seed][:2], equal_nan=True), name
