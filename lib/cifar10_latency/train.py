"""Training: SGD with Nesterov momentum, label smoothing, a step-wise LR schedule, mixed precision."""

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import random_crop_flip
from .data import normalize
from .evaluate import evaluate
from .models import build_model, init_whitening
from .optim import MUON_MODELS, Muon
from .weights import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


# Example values for error messages where the default (0: off) would be a poor example.
_EXAMPLES = {"prune_easy": 0.5, "time_budget_s": 900.0, "lookahead_every": 5, "low_res_epochs": 2, "eval_every": 1}


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.2  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv and linear weights only, not on BatchNorm or biases
    label_smoothing: float = 0.1
    schedule: str = "warmup_linear"  # or "onecycle"
    warmup_fraction: float = 0.15  # share of all steps spent ramping the LR up
    final_lr_fraction: float = 0.0  # LR at the last step, relative to `lr`
    amp: str = "auto"  # "auto", "off", "bf16" or "fp16"
    channels_last: bool = True
    crop_padding: int = 2  # random translation of up to this many pixels
    # The first `low_res_epochs` train on random `low_res_size` crops: objects keep their scale,
    # and each step costs about (low_res_size / 32)^2 of a full-size one, so more epochs fit the budget.
    low_res_epochs: int = 0
    low_res_size: int = 24
    flip: bool = True
    # Mirror each image on every other epoch (from a seeded coin per image) instead of at random,
    # so a short run trains on both orientations of every image within two epochs.
    alternate_flip: bool = False
    # Lookahead: every `lookahead_every` steps (0: off) slow weights move toward the SGD weights
    # and the SGD weights restart from them. The pull grows over the run, so the last steps
    # average the weights, which helps most when training is short.
    lookahead_every: int = 0
    lookahead_decay: float = 0.95  # per-step decay of the slow weights at the end of the run
    bias_lr_scale: float = 1.0  # LR multiplier for the parameters without weight decay (BatchNorm, biases)
    # "muon" trains the conv filters with orthogonalised momentum (optim.Muon) instead of SGD;
    # `muon_lr` is then their peak relative change per step, on the same schedule as `lr`.
    # NOTE: for 4 epochs at batch 128, 0.02 beat 0.01 and 0.05. Under a time budget with 1 thread,
    # 0.03 beat 0.02 by 0.95 points side by side. A later pair reached 89.9% at 0.04 and 89.8% at 0.05.
    conv_optimizer: str = "sgd"
    muon_lr: float = 0.02
    # Share of the easy images (last loss below the mean) that each epoch after the first skips at
    # random (InfoBatch, Qin et al. 2024). The easy images kept weigh more, so the expected gradient
    # is unchanged. The last epoch skips none. Skipped images cost nothing, so more epochs fit a budget.
    prune_easy: float = 0.0
    seed: int = 0
    eval_every: int = 0  # evaluate on the test set every N epochs (0: only at the end)
    # Wall-clock training budget in seconds (0: none). Training stops when it is spent, and the LR
    # schedule is stretched over the number of steps the pace so far projects, so it still ends
    # at the final LR; `epochs` becomes a cap. Runs with a budget are not bit-reproducible.
    time_budget_s: float = 0.0

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; valid options: {sorted(known)}")
        converted = {}
        for field in fields(cls):
            if field.name in values:
                kind = type(field.default)
                if kind is bool and not isinstance(values[field.name], bool):
                    raise ValueError(f"training option {field.name}={values[field.name]!r} is invalid: expected true or false")
                if kind in (int, float) and isinstance(values[field.name], bool):
                    # float(True) is 1.0, which would hide the mistake behind a range error.
                    raise ValueError(f"training option {field.name}={values[field.name]!r} is invalid: expected a number, "
                                     f"e.g. {_EXAMPLES.get(field.name, field.default)!r}")
                try:
                    # YAML reads 5e-4 as a string, so numbers are converted to the field's type.
                    converted[field.name] = values[field.name] if kind is str else kind(values[field.name])
                    if kind is int and float(values[field.name]) != converted[field.name]:
                        raise ValueError("not a whole number")
                except (TypeError, ValueError, OverflowError) as error:
                    expected = {str: "a string", int: "a whole number"}.get(kind, "a number")
                    raise ValueError(f"training option {field.name}={values[field.name]!r} is invalid: expected {expected}, "
                                     f"e.g. {_EXAMPLES.get(field.name, field.default)!r}") from error
        config = cls(**converted)
        if config.schedule not in ("warmup_linear", "onecycle"):
            raise ValueError(f"schedule {config.schedule!r} is invalid; use 'warmup_linear' or 'onecycle'")
        if config.conv_optimizer not in ("sgd", "muon"):
            raise ValueError(f"conv_optimizer {config.conv_optimizer!r} is invalid; use 'sgd' or 'muon'")
        if not 0 < config.muon_lr < 1:
            raise ValueError(f"muon_lr={config.muon_lr} is invalid; use a relative step in (0, 1), e.g. 0.02")
        if not 0 <= config.prune_easy < 1:
            raise ValueError(f"prune_easy={config.prune_easy} is invalid; use a share in [0, 1), e.g. 0.5 (0: off)")
        if config.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp {config.amp!r} is invalid; use 'auto', 'off', 'bf16' or 'fp16'")
        if config.epochs < 1 or config.batch_size < 1:
            raise ValueError(f"epochs={config.epochs} and batch_size={config.batch_size} must both be at least 1")
        if config.lookahead_every < 0:
            raise ValueError(f"lookahead_every={config.lookahead_every} is invalid; use 0 (off) or a number of steps")
        if not 0.0 <= config.lookahead_decay < 1.0:
            raise ValueError(f"lookahead_decay={config.lookahead_decay} is invalid; use a value in [0, 1), e.g. 0.95")
        if not (math.isfinite(config.time_budget_s) and config.time_budget_s >= 0):
            raise ValueError(f"time_budget_s={config.time_budget_s} is invalid; use 0 (no budget) or a positive number of seconds")
        if config.alternate_flip and not config.flip:
            raise ValueError("alternate_flip: true needs flip: true; set flip: false alone to train without flips")
        if not (math.isfinite(config.lr) and config.lr > 0):
            raise ValueError(f"lr={config.lr} is invalid; use a positive peak learning rate, e.g. 0.2")
        if not 0 <= config.momentum < 1:
            raise ValueError(f"momentum={config.momentum} is invalid; use a value in [0, 1), e.g. 0.9")
        if config.weight_decay < 0:
            raise ValueError(f"weight_decay={config.weight_decay} is invalid; use 0 or a positive value, e.g. 0.0005")
        if not 0 <= config.label_smoothing < 1:
            raise ValueError(f"label_smoothing={config.label_smoothing} is invalid; use a value in [0, 1), e.g. 0.1")
        if not 0 <= config.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction={config.warmup_fraction} is invalid; use a share of the steps in [0, 1), e.g. 0.15")
        if not 0 <= config.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction={config.final_lr_fraction} is invalid; use a share of lr in [0, 1], e.g. 0")
        if config.bias_lr_scale <= 0:
            raise ValueError(f"bias_lr_scale={config.bias_lr_scale} is invalid; use a positive multiplier (1 keeps the LR)")
        return config


def check_model_options(model_name, config):
    """Reject training options that do not apply to `model_name`."""
    if config.conv_optimizer == "muon" and model_name not in MUON_MODELS:
        raise ValueError(f"conv_optimizer 'muon' applies to {', '.join(MUON_MODELS)} only (it needs a BatchNorm after "
                         f"every conv), not {model_name!r}; use conv_optimizer: sgd")


def lr_at(step, total_steps, config):
    """LR for a 0-based step: a linear (or cosine, for onecycle) ramp up, then a decay to the final LR."""
    warmup = max(1, round(config.warmup_fraction * total_steps))
    final = config.final_lr_fraction * config.lr
    if step < warmup:
        progress = (step + 1) / warmup
        if config.schedule == "onecycle":
            return config.lr * (0.04 + 0.96 * (1 - math.cos(math.pi * progress)) / 2)
        return config.lr * progress
    progress = (step + 1 - warmup) / max(1, total_steps - warmup)
    if config.schedule == "onecycle":
        return final + (config.lr - final) * (1 + math.cos(math.pi * progress)) / 2
    return config.lr + (final - config.lr) * progress


def prune_easy_images(order, sample_loss, share, generator):
    """Drop a random `share` of the below-mean-loss images from `order`. Returns (order, loss weights).

    `sample_loss` contains each training image's last loss (NaN if never seen). The easy images that
    stay get a weight of 1 / (1 - share), the others 1, so the expected gradient is unchanged.
    """
    weights = torch.ones_like(sample_loss)
    seen = ~torch.isnan(sample_loss)
    if not seen.any():
        return order, weights
    easy = seen & (sample_loss < sample_loss[seen].mean())
    drop = easy & (torch.rand(sample_loss.shape, device=sample_loss.device, generator=generator) < share)
    weights[easy & ~drop] = 1 / (1 - share)
    return order[~drop[order]], weights


def _lookahead_decay(step, total_steps, cycle, config):
    # Cubic ramp from 0 (the slow weights just follow) to lookahead_decay**cycle at the last step.
    progress = min(1.0, (step + 1) / total_steps)
    return config.lookahead_decay ** cycle * progress ** 3


def resolve_amp(amp, device):
    """Pick the autocast dtype (or None for FP32) for `amp` on `device`."""
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On a CPU without native bf16 (no AVX512-BF16 or AMX) oneDNN emulates it, which is slower than FP32.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _optimizer(model, config):
    no_decay = {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": config.bias_lr_scale}
    if config.conv_optimizer == "muon":
        # The frozen whitening stem has no gradient, so it stays out of every group.
        filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
        others = [p for p in model.parameters() if 1 < p.ndim < 4]
        groups = [{"params": filters, "orthogonalize": True, "lr_scale": config.muon_lr / config.lr},
                  {"params": others, "weight_decay": config.weight_decay, "lr_scale": 1.0}, no_decay]
        return Muon(groups, lr=config.lr, momentum=config.momentum)
    decay = {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": config.weight_decay, "lr_scale": 1.0}
    return torch.optim.SGD([decay, no_decay], lr=config.lr, momentum=config.momentum, nesterov=True)


class Lookahead:
    """Slow copies of the parameters and BatchNorm statistics, updated every few SGD steps."""

    def __init__(self, model):
        self.slow = [tensor.detach().clone() for tensor in _float_state(model)]

    @torch.no_grad()
    def step(self, model, decay):
        for slow, fast in zip(self.slow, _float_state(model)):
            slow.lerp_(fast, 1 - decay)
            fast.copy_(slow)


def _float_state(model):
    return [tensor for tensor in model.state_dict().values() if tensor.is_floating_point()]


def _changed_settings(expected, state):
    """List each setting a resumed run would change, as 'name: checkpoint value -> requested value'."""
    changed = []
    for key, value in expected.items():
        old = state.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            changed += [f"{key}.{name}: {old.get(name)!r} -> {value.get(name)!r}"
                        for name in sorted(set(value) | set(old)) if old.get(name) != value.get(name)]
        elif old != value:
            changed.append(f"{key}: {old!r} -> {value!r}")
    return changed


def train(model_name, model_config, config, train_split, test_split, device="cpu", checkpoint_path=None, resume=True, stop_after_epoch=None):
    """Train a registered model from scratch and return (model, summary).

    With `checkpoint_path`, a checkpoint is written after each epoch and `resume` continues from it.
    Augmentation and shuffling are seeded per epoch, so a resumed run ends with the same weights
    as an uninterrupted one. `stop_after_epoch` ends early (used to test resuming).
    """
    device = torch.device(device)
    check_model_options(model_name, config)
    torch.manual_seed(config.seed)
    model = build_model(model_name, **model_config).to(device)
    # A whitening stem is set from the training images; other models have no stem to set.
    init_whitening(model, normalize(train_split.images[:10_000]))
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = _optimizer(model, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction="none")
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    full_steps = len(train_split) // config.batch_size  # steps of an epoch that skips no image
    if full_steps == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_split)} training images; lower it")
    total_steps = full_steps * config.epochs
    sample_loss = torch.full((len(train_split),), float("nan"), device=device)  # last loss of each image, for prune_easy

    start_epoch, train_seconds, history = 0, 0.0, []
    if checkpoint_path and resume and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path, model, optimizer)
        sample_loss = state.pop("tensors").get("sample_loss", sample_loss).to(device)
        # The checkpoint went through JSON, so compare against the JSON form (tuples become lists).
        expected = json.loads(json.dumps({"model": model_name, "model_config": model_config, "train_config": asdict(config),
                                          "train_images": len(train_split), "train_sha256": train_split.sha256}))
        # Options added after the checkpoint was written are missing from it. It ran with their
        # defaults, which leave every option off.
        state["train_config"] = {**json.loads(json.dumps(asdict(TrainConfig()))), **state.get("train_config", {})}
        changed = _changed_settings(expected, state)
        if changed:
            raise ValueError(f"checkpoint {checkpoint_path} was written with other settings ({'; '.join(changed)}); "
                             f"rerun with --no-resume or delete it")
        start_epoch, train_seconds, history = state["epoch"], state["train_seconds"], state["history"]
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        log.info("Resuming %s from epoch %d of %d (%s)", model_name, start_epoch, config.epochs, checkpoint_path)

    conv_optimizer = config.conv_optimizer
    if conv_optimizer == "muon":
        conv_optimizer += f" (muon_lr {config.muon_lr})"
    log.info(
        "Training %s on %s: %d epochs x %d steps, batch %d, autocast %s, conv filters by %s, seed %d",
        model_name, device, config.epochs, full_steps, config.batch_size, amp_dtype, conv_optimizer, config.seed,
    )
    # Every epoch closes its lookahead cycle, so the slow weights equal the checkpointed ones.
    lookahead = Lookahead(model) if config.lookahead_every else None
    generator = torch.Generator(device=device)
    if config.alternate_flip:
        generator.manual_seed(config.seed)
        first_flip = torch.rand(len(train_split), device=device, generator=generator) < 0.5
    images_seen = sum(record.get("images", 0) for record in history)
    step = images_seen // config.batch_size  # steps taken so far, over all epochs
    out_of_time = False
    slowest_step = 0.0  # seconds, for the budget check
    for epoch in range(start_epoch, config.epochs):
        # Seeding per epoch makes the data order and augmentation independent of where a run resumed.
        generator.manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(train_split), device=device, generator=generator)
        weights = None
        last_epoch = epoch == config.epochs - 1
        if config.time_budget_s and train_seconds > 0:
            # At the pace so far, the budget ends within this epoch if a full epoch would reach it.
            last_epoch = last_epoch or step + full_steps >= step * config.time_budget_s / train_seconds
        if config.prune_easy and last_epoch:
            log.info("epoch %d is the last: it sees every image", epoch + 1)
        elif config.prune_easy:
            order, weights = prune_easy_images(order, sample_loss, config.prune_easy, generator)
            log.info("epoch %d skips %d easy images of %d", epoch + 1, len(train_split) - len(order), len(train_split))
        steps_per_epoch = len(order) // config.batch_size
        # NOTE: later epochs are assumed to skip as many images as this one (the last none), so
        # with prune_easy the LR schedule is refitted, and jumps slightly, at each epoch start.
        step_cap = step + steps_per_epoch * (config.epochs - epoch - 1) + full_steps
        if not config.time_budget_s:
            total_steps = step_cap
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, mininterval=1.0)
        steps_done = 0
        cycle = 0  # SGD steps since the last lookahead update
        for i in bar:
            if config.time_budget_s:
                # NOTE: on CUDA this reads the host clock, which runs ahead of the queued kernels by
                # at most a few steps because the progress bar synchronises every 10 steps.
                now = time.perf_counter()
                elapsed = train_seconds + now - epoch_start
                if i > 0:
                    slowest_step = max(slowest_step, now - step_start)
                # A step starts only if it would end within the budget even at the slowest pace seen.
                # NOTE: the first step has no pace to go by, so it runs unless the budget is already spent.
                if elapsed + slowest_step >= config.time_budget_s:
                    out_of_time = True
                    break
                step_start = now
                if step > 0:
                    total_steps = min(step_cap, max(step + 1, round(step * config.time_budget_s / elapsed)))

            index = order[i * config.batch_size:(i + 1) * config.batch_size]
            size = config.low_res_size if epoch < config.low_res_epochs else None
            flip_mask = first_flip[index] ^ bool(epoch % 2) if config.alternate_flip else None
            images = random_crop_flip(train_split.images[index], config.crop_padding, config.flip, generator, size, flip_mask)
            inputs = normalize(images, memory_format=memory_format)
            labels = train_split.labels[index]

            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, config) * group["lr_scale"]

            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with autocast:
                logits = model(inputs)
                image_losses = criterion(logits, labels)
                mean_loss = image_losses.mean()
                loss = mean_loss
                if weights is not None:
                    loss = (image_losses * weights[index]).mean()
            if config.prune_easy:
                sample_loss[index] = image_losses.detach().float()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            cycle += 1
            if lookahead and (cycle == config.lookahead_every or i == steps_per_epoch - 1):
                lookahead.step(model, _lookahead_decay(step, total_steps, cycle, config))
                cycle = 0
            step += 1

            loss_sum += mean_loss.detach()
            correct += (logits.argmax(1) == labels).sum()
            steps_done = i + 1
            if i % 10 == 9 or i == steps_per_epoch - 1:
                # .item() synchronises, so the bar reads the device only every few steps.
                seen = (i + 1) * config.batch_size
                bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - epoch_start):.0f}")
        if lookahead and cycle:
            # The budget ended mid-cycle: close it, so the final weights are the slow ones.
            lookahead.step(model, _lookahead_decay(step - 1, total_steps, cycle, config))
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_seconds
        if steps_done == 0:
            break
        images_seen += steps_done * config.batch_size

        record = {"epoch": epoch + 1, "loss": loss_sum.item() / steps_done,
                  "train_accuracy": correct.item() / (steps_done * config.batch_size),
                  "seconds": epoch_seconds, "lr_end": optimizer.param_groups[0]["lr"],
                  "images": steps_done * config.batch_size}
        if config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch + 1 < config.epochs and not out_of_time:
            record["test_accuracy"] = evaluate(model, test_split, amp_dtype=amp_dtype, channels_last=config.channels_last)["accuracy"]
        history.append(record)
        log.info("epoch %d/%d: %s", epoch + 1, config.epochs, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch", "images")))

        if checkpoint_path:
            save_checkpoint(checkpoint_path, model, optimizer, {
                "model": model_name, "model_config": model_config, "train_config": asdict(config),
                "train_images": len(train_split), "train_sha256": train_split.sha256, "epoch": epoch + 1, "train_seconds": train_seconds, "history": history, "scaler": scaler.state_dict(),
            }, tensors={"sample_loss": sample_loss})
        if out_of_time:
            log.info("Time budget of %g s spent after %d steps of epoch %d", config.time_budget_s, steps_done, epoch + 1)
            if train_seconds > config.time_budget_s:
                # The first step runs with no pace to judge it by, and any step can be slower than all before it.
                log.warning("Training took %.3g s, past time_budget_s=%g; raise the budget if this run was meant to be useful",
                            train_seconds, config.time_budget_s)
            break
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break

    if images_seen == 0:
        raise ValueError(f"time_budget_s={config.time_budget_s} ended training before its first step; raise it or use 0 for no budget")
    summary = {"train_seconds": train_seconds, "epochs_done": len(history), "history": history,
               "autocast_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
               "images_seen": images_seen, "epochs_equivalent": images_seen / len(train_split),
               "images_per_second": images_seen / max(train_seconds, 1e-9)}
    return model.eval(), summary
