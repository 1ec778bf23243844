"""Training's parts: the objective, the examples, initialisation, the optimiser, checkpoints and export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from training_helpers import ids_in_splits, write_pair

from spectrosynth import models
from spectrosynth.constants import FRAMES_PER_SEGMENT, MIN_LOG_MEL
from spectrosynth.data import DatasetReader, DatasetSettings, build_dataset
from spectrosynth.errors import SpectrosynthError
from spectrosynth.pipeline import scale_features
from spectrosynth.presets import model_configs
from spectrosynth.training import TrainOptions, train
from spectrosynth.training.examples import TrainingExamples, collate, validation_examples
from spectrosynth.training.model import initialise, new_networks, position_table, published_state
from spectrosynth.training.objective import ZERO_PREDICTOR_LOSS, DiffusionObjective, diffuse, logsnr
from spectrosynth.training.optim import make_optimizer

HOLDOUT = 0.34


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three synthetic songs (5, 8 and 11 s): two for training, one held out."""
    root = tmp_path_factory.mktemp("training-data")
    names = ids_in_splits(HOLDOUT, train=2, validation=1)
    for name, seconds in zip(names, (5.0, 11.0, 8.0), strict=True):
        write_pair(root / "pairs", name, seconds=seconds)
    build_dataset(root / "pairs", root / "data", DatasetSettings(holdout=HOLDOUT))
    return root / "data"


@pytest.fixture(scope="module")
def reader(dataset):
    return DatasetReader(dataset)


def _tiny_objective(seed: int = 0, dropout: float = 0.0) -> DiffusionObjective:
    nets = new_networks(model_configs("tiny", dropout), seed)
    return DiffusionObjective(nets["notes_encoder"], nets["continuous_encoder"], nets["decoder"])


# ---------------------------------------------------------------------------------------------------------
# The objective


def test_the_schedule_runs_from_plus_to_minus_twenty():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert logsnr(t).tolist() == pytest.approx([20.0, 0.0, -20.0], abs=2e-3)  # float32, as the original
    x0, eps = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    z = diffuse(x0, eps, t)  # alpha: 1 at t = 0, 1/sqrt(2) at 0.5, e^-10 at 1
    assert z.flatten().tolist() == pytest.approx([1.0, math.sqrt(0.5), math.exp(-10)], rel=1e-3)


def test_a_network_that_predicts_zero_scores_about_0_798(reader):
    model = _tiny_objective()
    with torch.no_grad():
        model.decoder.output_proj.weight.zero_()
        examples = TrainingExamples(reader, seed=0)
        losses = model(collate([examples[i] for i in range(32)]))
    assert ZERO_PREDICTOR_LOSS == pytest.approx(0.7979, abs=1e-4)
    assert float(losses.mean()) == pytest.approx(ZERO_PREDICTOR_LOSS, abs=0.01)


def test_a_dropped_example_is_the_decoder_without_cross_attention(reader):
    # Both encodings zeroed must equal the sampler's unconditional branch (cross-attention skipped), exactly.
    model = _tiny_objective().eval()
    examples = TrainingExamples(reader, seed=0)
    batch = collate([examples[i] for i in range(4)])
    batch.keep[:] = False
    batch.t[:] = 0.3  # one time for all rows: the sampler's FiLM conditioning is shared by the batch
    with torch.no_grad():
        encodings, key_mask = model.encode(batch)
        assert torch.count_nonzero(encodings) == 0
        z = diffuse(batch.target, batch.eps, batch.t)
        films = model.decoder.conditioning(batch.t[:1])
        dropped = model.decoder(z, films, model.decoder.cross_keys_values(encodings), key_mask)
        uncond = model.decoder(
            z, films, model.decoder.cross_keys_values(encodings), key_mask, unconditional=True
        )
    torch.testing.assert_close(dropped, uncond[4:], rtol=0, atol=0)


def test_the_context_encoder_has_the_originals_terminal_relative_positions():
    # The original stores L context frames left-aligned and rolls the positions so the last valid frame is
    # at 255, masking queries and keys; right-aligned frames with key masking must give the same encodings.
    torch.manual_seed(0)
    config = model_configs("tiny", 0.0)["continuous_encoder"]
    encoder = models.build("continuous_encoder", config)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.3)
    length = 100
    frames = torch.rand(length, 128) * 2 - 1
    right = torch.full((1, 256, 128), -1.0)
    right[0, 256 - length :] = frames
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[0, 256 - length :] = True
    with torch.no_grad():
        ours = encoder(right, mask)[0, 256 - length :]
        # The original: left-aligned, positions roll(arange(256), L), attention among the valid frames only.
        left = torch.full((1, 256, 128), -1.0)
        left[0, :length] = frames
        positions = torch.roll(torch.arange(256), length)
        x = encoder.input_proj(left) + encoder.position_embedding.weight[positions]
        x = x[:, :length]  # valid queries attend to valid keys only: the same as a full query x key mask
        for layer in encoder.layers:
            x = layer(x)
        original = encoder.final_norm(x)[0]
    torch.testing.assert_close(ours, original, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Examples


def test_examples_are_a_function_of_the_seed_and_their_index(reader):
    a, b = TrainingExamples(reader, seed=3), TrainingExamples(reader, seed=3)
    order = [17, 2, 9, 2]
    first = [a[i] for i in order]
    second = [b[i] for i in reversed(order)][::-1]
    for x, y in zip(first, second, strict=True):
        assert (x.song, x.start, x.t, x.keep) == (y.song, y.start, y.t, y.keep)
        np.testing.assert_array_equal(x.eps, y.eps)
        np.testing.assert_array_equal(x.tokens, y.tokens)
    other = TrainingExamples(reader, seed=4)[17]
    assert (other.song, other.start, other.t) != (first[0].song, first[0].start, first[0].t)


def test_an_epoch_draws_each_song_once_per_5_12_seconds(reader):
    examples = TrainingExamples(reader, seed=0)
    songs = [examples[i].song for i in range(examples.epoch_length)]
    frames = {s.id: s.num_frames for s in reader.split("train")}
    assert {s: songs.count(s) for s in frames} == {s: math.ceil(n / 256) for s, n in frames.items()}
    assert set(songs) == set(frames)  # training songs only


def test_an_examples_context_is_the_frames_before_its_target(reader):
    examples = TrainingExamples(reader, seed=0)
    for i in range(60):
        e = examples[i]
        mel = reader.load(next(s for s in reader.songs if s.id == e.song)).mel
        length = min(e.start, 256)
        assert e.context_mask.sum() == length and e.context_mask[256 - length :].all()
        np.testing.assert_array_equal(
            e.context[256 - length :], scale_features(mel[e.start - length : e.start])
        )
        assert (e.context[: 256 - length] == -1).all()
        real = mel[e.start : e.start + 256]
        np.testing.assert_array_equal(e.target[: len(real)], scale_features(real))
        assert (e.target[len(real) :] == -1).all()  # silence past the end
        assert 0 <= e.start <= len(mel) - 2
    assert scale_features(np.array([MIN_LOG_MEL])) == -1


def test_condition_dropout_and_song_openings_come_at_their_rates(reader):
    n = 4000
    examples = TrainingExamples(reader, seed=1, cfg_dropout=0.1, start_rate=0.05)
    drawn = [examples[i] for i in range(n)]
    dropped = sum(not e.keep for e in drawn) / n
    openings = sum(e.start == 0 for e in drawn) / n
    sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(dropped - 0.1) < 3 * sd
    assert 0.05 - 3 * math.sqrt(0.05 * 0.95 / n) < openings < 0.05 + 0.01  # plus the rare natural zeros
    none = TrainingExamples(reader, seed=1, cfg_dropout=0.0, start_rate=0.0)
    assert all(none[i].keep for i in range(200))
    ts = np.array([e.t for e in drawn])
    assert 0 <= ts.min() and ts.max() < 1 and abs(ts.mean() - 0.5) < 0.02


def test_validation_examples_are_fixed_grid_segments_of_held_out_songs(reader):
    val = validation_examples(reader, 5, seed=0)  # the one held-out song (8 s) has 2 segments
    again = validation_examples(reader, 5, seed=0)
    held = {s.id for s in reader.split("validation")}
    assert [e.song for e in val] and {e.song for e in val} <= held
    assert [e.start for e in val] == [0, FRAMES_PER_SEGMENT] and all(e.keep for e in val)
    assert [e.t for e in val] == [e.t for e in again] == pytest.approx([0.25, 0.75])
    assert [e.start for e in validation_examples(reader, 1, seed=0)] == [0]
    for x, y in zip(val, again, strict=True):
        np.testing.assert_array_equal(x.eps, y.eps)


# ---------------------------------------------------------------------------------------------------------
# Initialisation and the optimiser


def test_fresh_networks_are_initialised_as_the_original():
    configs = model_configs("small")  # real sizes, for the statistics
    net = models.build("decoder", configs["decoder"])
    initialise(net, torch.Generator().manual_seed(0))
    layer = net.layers[0]
    d = configs["decoder"]
    dense = layer.mlp.wi_0.weight
    assert float(dense.std()) == pytest.approx(d["d_model"] ** -0.5, rel=0.02)
    assert float(dense.abs().max()) <= 2 * d["d_model"] ** -0.5 / 0.8796 + 1e-6  # truncated at 2 sigma
    assert float(layer.self_attn.k.weight.std()) == pytest.approx(d["d_model"] ** -0.5, rel=0.02)
    assert float(layer.self_attn.q.weight.std()) == pytest.approx(
        (d["d_model"] * d["d_kv"]) ** -0.5, rel=0.02
    )
    assert float(layer.self_attn_film.proj.weight.std()) == pytest.approx(
        (4 * d["d_model"]) ** -0.5, rel=0.02
    )
    assert torch.all(layer.mlp_norm.weight == 1)
    table = net.position_embedding.weight
    assert float(table.abs().max()) <= 1.0 and float(table.pow(2).mean()) == pytest.approx(0.5, abs=0.01)
    notes = models.build("notes_encoder", configs["notes_encoder"])
    initialise(notes, torch.Generator().manual_seed(0))
    assert float(notes.token_embedding.weight.std()) == pytest.approx(1.0, rel=0.01)


def test_position_tables_are_permuted_sinusoids_with_random_phases():
    table = position_table(256, 64, torch.Generator().manual_seed(0))
    other = position_table(256, 64, torch.Generator().manual_seed(1))
    assert not torch.equal(table, other)
    # every column is a sinusoid of one of the 32 frequencies, with some phase
    frequencies = torch.exp(torch.arange(32, dtype=torch.float64) * -math.log(1e4) / 31)
    positions = torch.arange(256, dtype=torch.float64)
    for column in table.T.double():
        fits = []
        for f in frequencies:
            basis = torch.stack([torch.sin(positions * f), torch.cos(positions * f)], 1)
            solution = torch.linalg.lstsq(basis, column[:, None]).solution
            fits.append(float((basis @ solution - column[:, None]).abs().max()))
        assert min(fits) < 1e-5


def _t5x_adafactor(param, grads, lr=1e-3, decay=0.8, eps1=1e-30, eps2=1e-3, clip=1.0):
    """A transcription of t5x's Adafactor.apply_param_gradient (no momentum, parameter scaling on,
    factored when both dims are >= 128), in numpy float64."""
    param = param.astype(np.float64).copy()
    factored = param.ndim == 2 and min(param.shape) >= 128
    v_row = np.zeros(param.shape[0]) if factored else None
    v_col = np.zeros(param.shape[1]) if factored else None
    v = None if factored else np.zeros_like(param)
    for step, grad in enumerate(grads):
        decay_rate = 1.0 - (step + 1.0) ** -decay
        mixing = 1.0 - decay_rate
        update_scale = lr * max(np.sqrt(np.mean(param * param)), eps2)
        grad_sqr = grad * grad + eps1
        if factored:
            v_row = decay_rate * v_row + mixing * grad_sqr.mean(axis=1)
            v_col = decay_rate * v_col + mixing * grad_sqr.mean(axis=0)
            row_factor = (v_row / v_row.mean()) ** -0.5
            col_factor = v_col**-0.5
            y = grad * row_factor[:, None] * col_factor[None, :]
        else:
            v = decay_rate * v + mixing * grad_sqr
            y = grad * v**-0.5
        y = y / max(1.0, np.sqrt(np.mean(y * y)) / clip)
        param = param - update_scale * y
    return param


@pytest.mark.parametrize("shape", [(256, 128), (384, 512), (768,)])
def test_adafactor_is_t5xs(shape):
    rng = np.random.default_rng(0)
    start = rng.standard_normal(shape) * 0.05
    grads = [rng.standard_normal(shape) * s for s in (1.0, 0.3, 2.0)]
    grads[1][: shape[0] // 4] = 0.0  # rows without gradient (unused token embeddings)
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = make_optimizer("adafactor", [param], lr=1e-3)
    for g in grads:
        param.grad = torch.tensor(g)
        optimizer.step()
    expected = _t5x_adafactor(start, grads)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=0, atol=1e-6 * np.abs(start).max())
    assert not np.allclose(expected, start, atol=1e-5)  # it did move


# ---------------------------------------------------------------------------------------------------------
# Export


def test_published_state_names_every_published_key(tmp_path):
    configs = model_configs("tiny")
    nets = new_networks(configs, seed=0)
    from spectrosynth.weights import published_keys

    for component, net in nets.items():
        state = published_state(net, component, configs[component])
        assert list(state) == list(published_keys(component, configs[component]))
        back = net.__class__(net.config)
        back.load_state_dict(models.rename_published(state, component), strict=True)
        for name, tensor in back.state_dict().items():
            assert torch.equal(tensor, net.state_dict()[name])


def test_bad_options_fail_before_any_work(dataset, tmp_path):
    out = tmp_path / "run"
    cases = [
        (
            TrainOptions(str(dataset), str(out), mode="lora"),
            "--mode lora fine-tunes a model: give the model with --init",
        ),
        (TrainOptions(str(dataset), str(out), mode="sideways"), "unknown --mode"),
        (TrainOptions(str(dataset), str(out), optimizer="sgd"), "unknown --optimizer"),
        (TrainOptions(str(dataset), str(out), lora_targets="everything"), "unknown --lora-targets"),
        (TrainOptions(str(dataset), str(out), cfg_dropout=1.0), "--cfg-dropout must be"),
        (TrainOptions(str(dataset), str(out), precision="float8"), "unknown --precision"),
        (TrainOptions(str(dataset), str(out), config="huge"), "--config huge: not a size"),
        (TrainOptions(str(dataset), str(out), config="tiny", batch_size=6, grad_accum=4), "does not split"),
        (TrainOptions(str(tmp_path / "nowhere"), str(out), config="tiny"), "no dataset folder"),
    ]
    for options, message in cases:
        with pytest.raises(SpectrosynthError, match=message):
            train(options)
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_learning_rate_schedules(kind):
    from spectrosynth.training.optim import lr_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = lr_schedule(optimizer, warmup=4, kind=kind, total=14)
    rates = []
    for _ in range(14):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    after = {
        "constant": [1.0] * 10,
        "cosine": [0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)],
        "linear": [1 - i / 10 for i in range(10)],
    }[kind]
    assert rates[4:] == pytest.approx(after)


@pytest.mark.parametrize("targets", ["attention", "all"])
def test_merged_lora_adapters_give_the_adapted_decoders_outputs(targets):
    from spectrosynth.training.model import add_lora, merged_decoder

    configs = model_configs("tiny", 0.0)
    decoder = new_networks(configs, seed=0)["decoder"]
    adapted = add_lora(decoder, rank=4, alpha=8, targets=targets).eval()
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:  # zero at initialisation: give the adapters something to merge
                p.normal_(0, 0.05)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    merged = merged_decoder(adapted, configs).eval()
    assert not any("lora" in n for n in merged.state_dict())
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 256, 128, generator=g), torch.tensor([0.3, 0.8])
    encodings = torch.randn(2, 40, 32, generator=g)
    with torch.no_grad():
        expected = adapted(x, adapted.conditioning(t), adapted.cross_keys_values(encodings))
        got = merged(x, merged.conditioning(t), merged.cross_keys_values(encodings))
        plain = new_networks(configs, seed=0)["decoder"].eval()
        before = plain(x, plain.conditioning(t), plain.cross_keys_values(encodings))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got - before).abs().max() > 1e-3  # the adapters changed the outputs
