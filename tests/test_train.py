import json

import pytest
import torch

from cifar10_latency import train as train_module
from cifar10_latency.models import build_model
from cifar10_latency.train import TrainConfig, lr_at, prune_easy_images, resolve_amp, train

from conftest import TINY_CONFIG

# Small and deterministic: no autocast, so CPU runs repeat bit for bit.
FAST = {"batch_size": 32, "amp": "off", "lr": 0.05}


def run(train_split, test_split, epochs=2, model_config=TINY_CONFIG, options=None, **kwargs):
    config = TrainConfig.from_dict({**FAST, "epochs": epochs, **(options or {})})
    return train("plain_cnn", model_config, config, train_split, test_split, device="cpu", **kwargs)


def assert_same_state(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs"


# Training loop


def test_train_lowers_loss(train_split, test_split):
    _, summary = run(train_split, test_split, epochs=3)
    history = summary["history"]

    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["train_accuracy"] > history[0]["train_accuracy"]


def test_train_muon_lowers_loss(train_split, test_split):
    _, summary = run(train_split, test_split, epochs=3, options={"conv_optimizer": "muon"})
    history = summary["history"]

    assert history[-1]["loss"] < history[0]["loss"]


def test_muon_keeps_filter_norms(train_split, test_split):
    model, _ = run(train_split, test_split, epochs=1, options={"conv_optimizer": "muon"})

    for conv in model.modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.weight.requires_grad:
            assert conv.weight.norm().item() == pytest.approx(conv.out_channels ** 0.5, rel=1e-4)


def test_muon_groups_cover_trainable_params():
    model = build_model("plain_cnn", widths=[8, 16], whiten_stem=True)
    config = TrainConfig.from_dict({"conv_optimizer": "muon"})

    optimizer = train_module._optimizer(model, config)

    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert optimizer.param_groups[0]["orthogonalize"]


def test_muon_rejected_for_models_without_batchnorm_everywhere(train_split, test_split):
    config = TrainConfig.from_dict({**FAST, "conv_optimizer": "muon"})

    with pytest.raises(ValueError) as error:
        train("mobilenet_v3_small", {}, config, train_split, test_split)

    assert "mobilenet_v3_small" in str(error.value)
    assert "conv_optimizer: sgd" in str(error.value)


def test_train_summary_fields(train_split, test_split):
    model, summary = run(train_split, test_split, epochs=1)

    assert summary["epochs_done"] == 1
    assert summary["autocast_dtype"] == "fp32"
    assert summary["train_seconds"] > 0
    assert summary["images_per_second"] > 0
    assert not model.training


def test_train_eval_every_records(train_split, test_split):
    config = TrainConfig.from_dict({**FAST, "epochs": 2, "eval_every": 1})

    _, summary = train("plain_cnn", TINY_CONFIG, config, train_split, test_split)

    # The last epoch is skipped because the caller evaluates the final model anyway.
    assert 0.0 <= summary["history"][0]["test_accuracy"] <= 1.0
    assert "test_accuracy" not in summary["history"][1]


def test_train_whiten_stem_runs(train_split, test_split):
    config = {"widths": [8, 16], "convs_per_stage": 1, "whiten_stem": True}

    model, summary = run(train_split, test_split, epochs=1, model_config=config)

    assert summary["epochs_done"] == 1
    assert not model.stem.weight.requires_grad


def test_train_low_res_epochs_crop(train_split, test_split, monkeypatch):
    sizes = []
    original = train_module.random_crop_flip

    def recording_augment(*args, **kwargs):
        images = original(*args, **kwargs)
        sizes.append(images.shape[-1])
        return images

    monkeypatch.setattr(train_module, "random_crop_flip", recording_augment)
    config = TrainConfig.from_dict({**FAST, "epochs": 2, "low_res_epochs": 1, "low_res_size": 24})

    train("plain_cnn", TINY_CONFIG, config, train_split, test_split)

    steps = len(sizes) // 2
    assert sizes[:steps] == [24] * steps
    assert sizes[steps:] == [32] * steps


def test_prune_easy_drops_only_easy_images():
    sample_loss = torch.tensor([0.1, 0.2, 3.0, float("nan"), 0.15, 5.0, 0.3, 0.25])
    order = torch.tensor([5, 3, 0, 7, 1, 6, 2, 4])
    generator = torch.Generator().manual_seed(0)

    kept_order, weights = prune_easy_images(order, sample_loss, 0.5, generator)

    # The mean of the seen losses is about 1.29, so images 2 and 5 are hard. Image 3 was never seen.
    easy = {0, 1, 4, 6, 7}
    dropped = set(order.tolist()) - set(kept_order.tolist())
    assert dropped
    assert dropped < easy
    assert kept_order.tolist() == [i for i in order.tolist() if i not in dropped]
    for image in range(8):
        expected = 2.0 if image in easy - dropped else 1.0
        assert weights[image].item() == expected, image


def test_prune_easy_before_any_loss_keeps_all():
    order = torch.arange(4)

    kept_order, weights = prune_easy_images(order, torch.full((4,), float("nan")), 0.5, torch.Generator().manual_seed(0))

    assert torch.equal(kept_order, order)
    assert torch.equal(weights, torch.ones(4))


def test_prune_easy_full_last_epoch(train_split, test_split):
    _, summary = run(train_split, test_split, epochs=3, options={"prune_easy": 0.5})

    images = [record["images"] for record in summary["history"]]
    full = len(train_split) // FAST["batch_size"] * FAST["batch_size"]
    assert images[0] == full
    assert images[1] < full
    assert images[2] == full
    assert summary["images_seen"] == sum(images)
    # The schedule was fitted to the skipped steps, so it still ends at the final LR.
    assert summary["history"][-1]["lr_end"] == 0.0


def pruned_run_on_fake_clock(train_split, test_split, monkeypatch, epochs, time_budget_s):
    """Train with prune_easy 0.5 on a fake clock; returns the summary and the images of a full epoch."""
    monkeypatch.setattr(train_module, "time", FakeClock())
    config = TrainConfig.from_dict({**FAST, "epochs": epochs, "time_budget_s": time_budget_s, "prune_easy": 0.5})
    _, summary = train("plain_cnn", TINY_CONFIG, config, train_split, test_split)
    return summary, len(train_split) // FAST["batch_size"] * FAST["batch_size"]


def test_prune_easy_lr_ends_under_epoch_cap(train_split, test_split, monkeypatch):
    # The budget is too long to bind, so the epoch cap ends training and the LR must still reach its end.
    summary, full = pruned_run_on_fake_clock(train_split, test_split, monkeypatch, epochs=3, time_budget_s=1000.0)

    assert summary["history"][1]["images"] < full
    assert summary["history"][-1]["lr_end"] == 0.0


def test_prune_easy_under_budget(train_split, test_split, monkeypatch):
    summary, full = pruned_run_on_fake_clock(train_split, test_split, monkeypatch, epochs=1000, time_budget_s=1.5)

    assert any(record["images"] < full for record in summary["history"][1:-1])
    assert summary["train_seconds"] <= 1.5


class FakeClock:
    """Stand-in for the `time` module whose clock advances 1/128 s at every reading.

    A power of two keeps the sums of readings exact in floating point.
    """

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 2 ** -7
        return self.now


def test_train_time_budget_stops(train_split, test_split, monkeypatch):
    # A fake clock makes the step times exact, so the budget check is tested without timing noise.
    monkeypatch.setattr(train_module, "time", FakeClock())
    config = TrainConfig.from_dict({**FAST, "epochs": 1000, "time_budget_s": 1.0})

    _, summary = train("plain_cnn", TINY_CONFIG, config, train_split, test_split)

    assert summary["epochs_done"] < 1000
    # The last step starts only if it fits, so the budget is never overrun.
    assert summary["train_seconds"] <= 1.0
    assert summary["train_seconds"] > 0.9
    # The schedule is stretched over the projected steps, so the LR has decayed by the end.
    assert summary["history"][-1]["lr_end"] < 0.5 * FAST["lr"]


def test_train_batch_too_large(train_split, test_split):
    config = TrainConfig.from_dict({**FAST, "epochs": 1, "batch_size": len(train_split) + 1})

    with pytest.raises(ValueError) as error:
        train("plain_cnn", TINY_CONFIG, config, train_split, test_split)

    assert "batch_size" in str(error.value)


def test_train_same_seed_repeats(train_split, test_split):
    first, _ = run(train_split, test_split, epochs=1)
    second, _ = run(train_split, test_split, epochs=1)

    assert_same_state(first.state_dict(), second.state_dict())


# Training tricks for short runs


def test_lookahead_changes_weights(train_split, test_split):
    plain, _ = run(train_split, test_split, epochs=1)
    averaged, summary = run(train_split, test_split, epochs=1, options={"lookahead_every": 3})

    assert summary["history"][0]["loss"] > 0
    assert not torch.equal(plain.state_dict()["classifier.weight"], averaged.state_dict()["classifier.weight"])


def test_lookahead_step_moves_slow_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    lookahead = train_module.Lookahead(model)
    start = model.weight.detach().clone()

    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.step(model, decay=0.75)

    # The slow weights move a quarter of the way, and the fast weights restart from them.
    assert torch.allclose(model.weight, start + 0.25)
    assert torch.allclose(lookahead.slow[0], start + 0.25)


def test_lookahead_decay_ramps_to_final():
    config = TrainConfig.from_dict({"lookahead_every": 5, "lookahead_decay": 0.9})

    early = train_module._lookahead_decay(0, 100, 5, config)
    middle = train_module._lookahead_decay(49, 100, 5, config)
    last = train_module._lookahead_decay(99, 100, 5, config)

    assert early < 1e-5
    assert middle == pytest.approx(0.9 ** 5 * 0.5 ** 3)
    assert last == pytest.approx(0.9 ** 5)


def test_bias_lr_scale_no_decay_group(train_split, test_split, monkeypatch):
    seen = []
    original_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append([(group["lr"], group["weight_decay"]) for group in self.param_groups])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    run(train_split, test_split, epochs=1, options={"bias_lr_scale": 8.0})

    assert seen
    for (weight_lr, weight_decay), (bias_lr, bias_decay) in seen:
        assert bias_lr == pytest.approx(8.0 * weight_lr)
        assert weight_decay == TrainConfig.weight_decay
        assert bias_decay == 0.0


def test_alternate_flip_mirrors_every_other_epoch(train_split, test_split, monkeypatch):
    masks_by_epoch = []
    original_augment = train_module.random_crop_flip

    def recording_augment(images, padding, flip, generator, size, flip_mask):
        if not masks_by_epoch or len(masks_by_epoch[-1]) == len(train_split) // FAST["batch_size"] * FAST["batch_size"]:
            masks_by_epoch.append({})
        # The synthetic images are random, so their bytes identify them across epochs.
        for image, mirrored in zip(images, flip_mask):
            masks_by_epoch[-1][image.numpy().tobytes()] = bool(mirrored)
        return original_augment(images, padding, flip, generator, size, flip_mask)

    monkeypatch.setattr(train_module, "random_crop_flip", recording_augment)
    run(train_split, test_split, epochs=3, options={"alternate_flip": True})

    first, second, third = masks_by_epoch
    common = first.keys() & second.keys() & third.keys()
    assert len(common) > len(train_split) // 2
    assert all(first[key] != second[key] and first[key] == third[key] for key in common)
    assert 0 < sum(first.values()) < len(first)


# Resuming from a checkpoint


# With lookahead every 3 steps, each 10-step epoch ends with an open cycle that the epoch closes.
# Alternating flips depend on the epoch number, so both must survive a resume.
TRICKS = {"lookahead_every": 3, "alternate_flip": True, "bias_lr_scale": 4.0}


MUON = {**TRICKS, "conv_optimizer": "muon", "muon_lr": 0.05}


@pytest.mark.parametrize("options", [{}, TRICKS, MUON], ids=["plain", "tricks", "muon"])
def test_resume_matches_uninterrupted(train_split, test_split, tmp_path, monkeypatch, options):
    checkpoint = tmp_path / "run.safetensors"
    straight, straight_summary = run(train_split, test_split, epochs=2, options=options)

    half, half_summary = run(train_split, test_split, epochs=2, checkpoint_path=checkpoint, stop_after_epoch=1, options=options)
    half_state = {k: v.clone() for k, v in half.state_dict().items()}
    augmented_batches = []
    original_augment = train_module.random_crop_flip

    def counting_augment(*args, **kwargs):
        augmented_batches.append(1)
        return original_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "random_crop_flip", counting_augment)
    resumed, resumed_summary = run(train_split, test_split, epochs=2, checkpoint_path=checkpoint, options=options)

    assert half_summary["epochs_done"] == 1
    assert checkpoint.is_file()
    # Only the second epoch ran again: one augmented batch per step of one epoch.
    assert len(augmented_batches) == len(train_split) // FAST["batch_size"]
    assert resumed_summary["epochs_done"] == 2
    assert resumed_summary["history"][0] == half_summary["history"][0]
    # The second epoch changed the weights, so the equality below is not trivial.
    assert not torch.equal(half_state["classifier.weight"], resumed.state_dict()["classifier.weight"])
    assert_same_state(straight.state_dict(), resumed.state_dict())
    assert resumed_summary["history"][1]["loss"] == straight_summary["history"][1]["loss"]


def test_resume_prune_easy_matches_uninterrupted(train_split, test_split, tmp_path):
    # The second epoch skips images by the losses of the first, so those losses must survive a resume.
    checkpoint = tmp_path / "run.safetensors"
    options = {**TRICKS, "prune_easy": 0.5}
    straight, straight_summary = run(train_split, test_split, epochs=3, options=options)

    run(train_split, test_split, epochs=3, checkpoint_path=checkpoint, stop_after_epoch=1, options=options)
    resumed, resumed_summary = run(train_split, test_split, epochs=3, checkpoint_path=checkpoint, options=options)

    assert resumed_summary["history"][1]["images"] < resumed_summary["history"][0]["images"]
    for resumed_epoch, straight_epoch in zip(resumed_summary["history"], straight_summary["history"], strict=True):
        assert resumed_epoch["images"] == straight_epoch["images"]
        assert resumed_epoch["loss"] == straight_epoch["loss"]
    assert_same_state(straight.state_dict(), resumed.state_dict())


def test_resume_tuple_widths(train_split, test_split, tmp_path):
    # A Python caller may pass widths as a tuple, like PlainCNN's own default. The checkpoint
    # stores the config as JSON, which reads it back as a list.
    checkpoint = tmp_path / "run.safetensors"
    config = {"widths": (8, 16), "convs_per_stage": 1, "stem_width": 8}
    run(train_split, test_split, epochs=2, model_config=config, checkpoint_path=checkpoint, stop_after_epoch=1)

    _, summary = run(train_split, test_split, epochs=2, model_config=config, checkpoint_path=checkpoint)

    assert summary["epochs_done"] == 2


def test_resume_other_config_rejected(train_split, test_split, tmp_path):
    checkpoint = tmp_path / "run.safetensors"
    run(train_split, test_split, epochs=2, checkpoint_path=checkpoint, stop_after_epoch=1)
    other = TrainConfig.from_dict({**FAST, "epochs": 2, "seed": 1})

    with pytest.raises(ValueError) as error:
        train("plain_cnn", TINY_CONFIG, other, train_split, test_split, checkpoint_path=checkpoint)

    assert str(checkpoint) in str(error.value)
    # The message names the one setting that differs, with both values, and nothing else.
    assert "(train_config.seed: 0 -> 1)" in str(error.value)


def test_resume_checkpoint_older_than_an_option(train_split, test_split, tmp_path):
    # A checkpoint written before prune_easy existed has no such key, and it ran with the option off.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "run.safetensors"
    run(train_split, test_split, epochs=2, checkpoint_path=checkpoint, stop_after_epoch=1)
    with safe_open(str(checkpoint), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    del state["train_config"]["prune_easy"]
    tensors = {k: v for k, v in load_file(str(checkpoint)).items() if not k.startswith("loop.")}
    save_file(tensors, str(checkpoint), metadata={"state": json.dumps(state)})

    _, summary = run(train_split, test_split, epochs=2, checkpoint_path=checkpoint)

    assert summary["epochs_done"] == 2
    assert summary["history"][0] == state["history"][0]


def test_no_resume_starts_afresh(train_split, test_split, tmp_path):
    checkpoint = tmp_path / "run.safetensors"
    straight, _ = run(train_split, test_split, epochs=1)
    run(train_split, test_split, epochs=2, checkpoint_path=checkpoint, stop_after_epoch=2)

    fresh, summary = run(train_split, test_split, epochs=1, checkpoint_path=checkpoint, resume=False)

    assert summary["epochs_done"] == 1
    assert_same_state(straight.state_dict(), fresh.state_dict())


# Configuration


def test_config_defaults_valid():
    config = TrainConfig.from_dict({})

    assert config == TrainConfig()


def test_config_unknown_key():
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})

    assert "learning_rate" in str(error.value)


def test_config_converts_yaml_strings():
    # YAML reads 5e-4 (no dot) as a string.
    config = TrainConfig.from_dict({"weight_decay": "5e-4", "epochs": "3"})

    assert config.weight_decay == 5e-4
    assert config.epochs == 3


def test_config_rejects_bad_number():
    with pytest.raises(ValueError, match="epochs='two'"):
        TrainConfig.from_dict({"epochs": "two"})


def test_config_rejects_bool_number():
    # YAML reads `muon_lr: true` as a bool, which float() would quietly turn into 1.0.
    with pytest.raises(ValueError, match="muon_lr=True is invalid: expected a number, e.g. 0.02"):
        TrainConfig.from_dict({"muon_lr": True})


def test_config_text_number_error_gives_example():
    with pytest.raises(ValueError, match="muon_lr='abc' is invalid: expected a number, e.g. 0.02"):
        TrainConfig.from_dict({"muon_lr": "abc"})


def test_config_prune_easy_error_example():
    # The default 0.0 would read as a suggestion to turn the option off.
    with pytest.raises(ValueError, match="prune_easy='abc' is invalid: expected a number, e.g. 0.5"):
        TrainConfig.from_dict({"prune_easy": "abc"})


def test_config_rejects_string_bool():
    with pytest.raises(ValueError, match="flip"):
        TrainConfig.from_dict({"flip": "false"})


def test_config_bad_schedule():
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"schedule": "cosine"})

    assert "cosine" in str(error.value)


def test_config_bad_amp():
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"amp": "fp8"})

    assert "fp8" in str(error.value)


@pytest.mark.parametrize("values", [
    {"lookahead_every": -1}, {"lookahead_every": 2.7}, {"lookahead_decay": 1.0}, {"lookahead_decay": -0.1},
    {"bias_lr_scale": 0}, {"conv_optimizer": "adam"}, {"muon_lr": 0}, {"muon_lr": 1.5}, {"prune_easy": -0.1}, {"prune_easy": 1.0}, {"time_budget_s": -5}, {"time_budget_s": float("inf")}, {"time_budget_s": float("nan")},
    {"lr": -1}, {"lr": 0}, {"momentum": 1.0}, {"weight_decay": -0.1}, {"label_smoothing": 1.0},
    {"warmup_fraction": -0.1}, {"final_lr_fraction": 1.5},
])
def test_config_bad_short_run_options(values):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict(values)

    assert next(iter(values)) in str(error.value)


def test_config_alternate_flip_needs_flip():
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"alternate_flip": True, "flip": False})

    assert "alternate_flip" in str(error.value)


def test_train_budget_before_first_step(train_split, test_split, monkeypatch):
    # The fake clock's first steps cost 1/128 s, so a 1/256 s budget ends before any step.
    monkeypatch.setattr(train_module, "time", FakeClock())
    config = TrainConfig.from_dict({**FAST, "epochs": 1, "time_budget_s": 2 ** -8})

    with pytest.raises(ValueError) as error:
        train("plain_cnn", TINY_CONFIG, config, train_split, test_split)

    assert "time_budget_s" in str(error.value)


def test_budget_shorter_than_step_warns(train_split, test_split, monkeypatch, caplog):
    # The budget lets the first step start but not finish: the step runs and the overrun is logged.
    monkeypatch.setattr(train_module, "time", FakeClock())
    config = TrainConfig.from_dict({**FAST, "epochs": 1, "time_budget_s": 1.5 * 2 ** -7})

    _, summary = train("plain_cnn", TINY_CONFIG, config, train_split, test_split)

    assert summary["images_seen"] == FAST["batch_size"]
    assert summary["train_seconds"] > config.time_budget_s
    assert "past time_budget_s=0.0117188" in caplog.text


@pytest.mark.parametrize("values", [{"epochs": 0}, {"batch_size": 0}])
def test_config_bad_sizes(values):
    with pytest.raises(ValueError):
        TrainConfig.from_dict(values)


# Learning-rate schedule


@pytest.mark.parametrize("schedule", ["warmup_linear", "onecycle"])
def test_lr_warmup_rises(schedule):
    config = TrainConfig(schedule=schedule, lr=0.2, warmup_fraction=0.2)
    rates = [lr_at(step, 100, config) for step in range(20)]

    assert all(a < b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("schedule", ["warmup_linear", "onecycle"])
def test_lr_decay_falls(schedule):
    config = TrainConfig(schedule=schedule, lr=0.2, warmup_fraction=0.2)
    rates = [lr_at(step, 100, config) for step in range(20, 100)]

    assert all(a > b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("schedule", ["warmup_linear", "onecycle"])
@pytest.mark.parametrize("final_fraction", [0.0, 0.1])
def test_lr_ends_at_final(schedule, final_fraction):
    # TrainConfig documents final_lr_fraction as the LR at the last step, relative to lr.
    config = TrainConfig(schedule=schedule, lr=0.2, warmup_fraction=0.15, final_lr_fraction=final_fraction)

    assert lr_at(99, 100, config) == pytest.approx(0.2 * final_fraction, abs=1e-9)


def test_lr_linear_warmup_values():
    config = TrainConfig(schedule="warmup_linear", lr=0.2, warmup_fraction=0.1)

    assert lr_at(0, 100, config) == pytest.approx(0.02)
    assert lr_at(4, 100, config) == pytest.approx(0.1)


def test_lr_onecycle_starts_low():
    config = TrainConfig(schedule="onecycle", lr=0.2, warmup_fraction=0.5)

    assert 0.04 * 0.2 <= lr_at(0, 1000, config) < 0.01


def test_lr_single_step():
    config = TrainConfig(lr=0.2)

    assert lr_at(0, 1, config) == pytest.approx(0.2)


# Autocast selection


@pytest.mark.parametrize("amp, expected", [("off", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_resolve_amp_explicit(amp, expected):
    assert resolve_amp(amp, "cpu") is expected


def test_resolve_amp_auto_cpu():
    assert resolve_amp("auto", "cpu") in (None, torch.bfloat16)
