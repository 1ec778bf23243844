"""The weight average (EMA) and the wsd cool-down: their formulas, checkpoints, --resume, final/."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import ids_in_splits, write_pair

from spectrosynth.data import DatasetSettings, build_dataset
from spectrosynth.errors import SpectrosynthError
from spectrosynth.training import TrainOptions, resumed_options, train
from spectrosynth.training.checkpoint import complete, latest
from spectrosynth.training.ema import WeightAverage, ema_decay
from spectrosynth.training.model import load_networks
from spectrosynth.training.optim import lr_factor, lr_schedule

HOLDOUT = 0.34
PREFIXES = {"notes_encoder": "notes_encoder", "context_encoder": "continuous_encoder", "decoder": "decoder"}


# ---------------------------------------------------------------------------------------------------------
# The average itself


def test_the_decay_warms_up_as_documented():
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(1000) == pytest.approx(0.99438, abs=1e-5)  # the docstring's 0.9944 at step 1,000
    assert ema_decay(10_000) == pytest.approx(0.99900, abs=1e-5)
    assert ema_decay(215_000) == pytest.approx(0.9999, abs=2e-7)
    assert ema_decay(10**7) == 0.9999  # the ceiling
    assert ema_decay(100, max_decay=0.9) == 0.9
    assert ema_decay(9, power=1.0) == pytest.approx(0.9)
    decays = [ema_decay(k) for k in range(1, 5000)]
    assert all(a < b for a, b in zip(decays, decays[1:], strict=False))


def _module(values):
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    module.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    return module


def test_the_average_of_constant_weights_is_those_weights():
    module = _module([0.1, -3.0, 7.25])
    average = WeightAverage(module)
    for _ in range(300):
        average.update()
    assert torch.equal(average.average["w"], module.w.detach())
    assert set(average.average) == {"w"}  # frozen parameters are not averaged
    assert average.updates == 300


def test_the_average_follows_the_recursion():
    module = _module([0.0])
    average = WeightAverage(module, max_decay=0.9, power=1.0)
    expected = 0.0
    for k, value in enumerate([1.0, 2.0, -1.0, 4.0, 0.5, 3.0], start=1):
        with torch.no_grad():
            module.w.fill_(value)
        average.update()
        decay = min(0.9, 1 - 1 / (1 + k))
        expected = decay * expected + (1 - decay) * value
        assert float(average.average["w"]) == pytest.approx(expected, rel=1e-6)
    assert float(average.average["w"]) != pytest.approx(3.0)  # it is an average, not the last value


def test_applied_swaps_the_average_in_and_restores_the_weights_exactly():
    module = _module([1.0, 2.0])
    average = WeightAverage(module)
    with torch.no_grad():
        module.w.add_(torch.tensor([0.123456789, -9.87654321]))
    raw = module.w.detach().clone()
    with average.applied():
        assert torch.equal(module.w.detach(), torch.tensor([1.0, 2.0]))
    assert torch.equal(module.w.detach(), raw)
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("restored on errors too")
    assert torch.equal(module.w.detach(), raw)


# ---------------------------------------------------------------------------------------------------------
# The cool-down schedule


def test_wsd_holds_then_cools_down_to_zero_with_one_minus_sqrt():
    total = 100
    assert lr_factor(0, 0, "wsd", total, 0.2) == 1.0
    assert lr_factor(79, 0, "wsd", total, 0.2) == 1.0
    assert lr_factor(80, 0, "wsd", total, 0.2) == 1.0  # the decay's first step: progress 0
    assert lr_factor(81, 0, "wsd", total, 0.2) == pytest.approx(1 - math.sqrt(1 / 20))
    assert lr_factor(90, 0, "wsd", total, 0.2) == pytest.approx(1 - math.sqrt(0.5))
    assert lr_factor(99, 0, "wsd", total, 0.2) == pytest.approx(1 - math.sqrt(19 / 20))
    assert lr_factor(100, 0, "wsd", total, 0.2) == 0.0
    # a cool-down given in steps, and a warm-up before the stable phase
    assert lr_factor(69, 10, "wsd", total, 30) == 1.0
    assert lr_factor(85, 10, "wsd", total, 30) == pytest.approx(1 - math.sqrt(0.5))
    assert lr_factor(0, 10, "wsd", total, 30) == pytest.approx(0.1)
    # before its decay, wsd is the constant schedule: what makes switching on resume seamless
    assert all(lr_factor(k, 5, "wsd", total, 0.2) == lr_factor(k, 5, "constant", total) for k in range(80))


def test_the_schedule_drives_the_optimizers_rate():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    schedule = lr_schedule(optimizer, warmup=0, kind="wsd", total=10, cooldown=4)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([2.0] * 7 + [2 * (1 - math.sqrt(k / 4)) for k in (1, 2, 3)])


# ---------------------------------------------------------------------------------------------------------
# In training runs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-ema")
    for name, seconds in zip(ids_in_splits(HOLDOUT, train=2, validation=1), (5.0, 11.0, 8.0), strict=True):
        write_pair(root / "pairs", name, seconds=seconds)
    build_dataset(root / "pairs", root / "data", DatasetSettings(holdout=HOLDOUT))
    return root / "data"


def _options(dataset, out, **changes) -> TrainOptions:
    base = dict(
        config="tiny", batch_size=4, log_every=1, val_examples=2, precision="float32", checkpoint_every=2,
        val_every=3, max_steps=6,
    )  # fmt: skip
    return TrainOptions(str(dataset), str(out), **{**base, **changes})


def _final(out) -> dict[str, torch.Tensor]:
    """final/'s tensors under the run's own names (component.parameter)."""
    nets, _ = load_networks(out / "final")
    return {
        f"{ours}.{name}": p.detach()
        for ours, published in PREFIXES.items()
        for name, p in nets[published].named_parameters()
    }


def test_a_run_keeps_the_average_validates_it_and_saves_it_as_final(dataset, tmp_path):
    out = tmp_path / "run"
    train(_options(dataset, out))
    last = latest(out)
    average = load_file(last.path / "ema.safetensors")
    raw = load_file(last.path / "weights.safetensors")
    assert json.loads((last.path / "state.json").read_text())["ema_updates"] == 6
    final = _final(out)
    assert set(average) <= set(raw)
    differ = [k for k in average if not torch.equal(average[k], raw[k])]
    assert differ  # the average is not the last weights
    for name, tensor in average.items():
        assert torch.equal(final[name], tensor), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    validated = [r for r in rows if r["val_loss"]]
    assert [r["step"] for r in validated] == ["0", "3", "6"]
    assert all(r["val_loss_raw"] for r in validated)
    assert validated[0]["val_loss"] == validated[0]["val_loss_raw"]  # step 0: the average is the weights
    assert validated[-1]["val_loss"] != validated[-1]["val_loss_raw"]

    raw_run = tmp_path / "raw"
    train(_options(dataset, raw_run, final_weights="raw"))
    assert torch.equal(load_file(latest(raw_run).path / "weights.safetensors")[differ[0]], raw[differ[0]])
    assert torch.equal(_final(raw_run)[differ[0]], raw[differ[0]])

    none = tmp_path / "none"
    train(_options(dataset, none, ema_decay=0.0))
    assert not (latest(none).path / "ema.safetensors").exists()
    assert torch.equal(_final(none)[differ[0]], raw[differ[0]])  # the average changes no weight


def test_a_checkpoint_without_an_average_starts_one_on_resume(dataset, tmp_path):
    out = tmp_path / "run"
    notes = []
    train(_options(dataset, out, max_steps=4))
    (latest(out).path / "ema.safetensors").unlink()  # as written before spectrosynth kept an average
    options = resumed_options(out, max_steps=6)
    train(options, callback=lambda p: notes.append(p.message) if p.event == "note" else None, resume=True)
    assert any("has no weight average (EMA): it starts here" in n for n in notes)
    assert json.loads((latest(out).path / "state.json").read_text())["ema_updates"] == 2


def test_a_constant_run_switched_to_wsd_on_resume_equals_wsd_from_the_start(dataset, tmp_path):
    wsd, switched = tmp_path / "wsd", tmp_path / "switched"
    notes = []
    train(_options(dataset, wsd, max_steps=8, lr_schedule="wsd", cooldown=4, lr=3e-3))
    train(_options(dataset, switched, max_steps=4, lr=3e-3))
    options = resumed_options(switched, max_steps=8, lr_schedule="wsd", cooldown=4.0)
    train(options, callback=lambda p: notes.append(p.message) if p.event == "note" else None, resume=True)
    assert not [n for n in notes if "learning rate" in n]  # the switch came before the decay: no jump
    for name in ("weights.safetensors", "ema.safetensors"):
        a, b = load_file(latest(wsd).path / name), load_file(latest(switched).path / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    rates = [float(r["lr"]) for r in csv.DictReader((switched / "metrics.csv").open()) if r["lr"]]
    # each row logs the rate of the step after it: 1 up to the decay's first step (5), then 1 - sqrt
    assert rates == pytest.approx([3e-3] * 4 + [3e-3 * (1 - math.sqrt(k / 4)) for k in (1, 2, 3)] + [0.0])
    # the switch is recorded: the next --resume goes on with the cool-down, not the constant rate
    again = resumed_options(switched)
    assert (again.lr_schedule, again.cooldown, again.max_steps) == ("wsd", 4.0, 8)


def test_a_switch_that_moves_the_rate_says_so(dataset, tmp_path):
    out = tmp_path / "run"
    notes = []
    train(_options(dataset, out, max_steps=6))
    options = resumed_options(out, max_steps=8, lr_schedule="wsd", cooldown=0.5)  # decay from step 4
    train(options, callback=lambda p: notes.append(p.message) if p.event == "note" else None, resume=True)
    assert any("the learning rate goes from 0.001 to 0.000293 at step 6" in n for n in notes), notes


def test_keep_doublings_keeps_the_checkpoints_at_every_doubling(dataset, tmp_path):
    out = tmp_path / "run"
    train(_options(dataset, out, max_steps=10, keep_checkpoints=1, keep_doublings=True, val_every=0))
    assert [c.step for c in complete(out)] == [2, 4, 8, 10]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ema_decay": 1.0}, "--ema-decay must be from 0"),
        ({"ema_power": 0.0}, "--ema-power must be a positive number"),
        ({"final_weights": "best"}, "unknown --final-weights 'best'"),
        ({"cooldown": 1.5}, "--cooldown must be a share of the run below 1"),
        ({"lr_schedule": "step"}, "unknown --lr-schedule 'step'"),
    ],
)
def test_bad_options_are_one_line_errors(dataset, tmp_path, changes, message):
    with pytest.raises(SpectrosynthError, match=message):
        train(_options(dataset, tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()


def test_resume_still_refuses_changes_to_the_average(dataset, tmp_path):
    out = tmp_path / "run"
    train(_options(dataset, out, max_steps=2))
    with pytest.raises(SpectrosynthError, match="--ema-decay 0.9999"):
        resumed_options(out, ema_decay=0.99)
    assert resumed_options(out, final_weights="raw", keep_doublings=True).final_weights == "raw"
