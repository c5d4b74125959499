"""Test-set accuracy, overall and per class, with optional flip averaging (TTA)."""

import contextlib

import torch

from .data import NUM_CLASSES, normalize


@torch.inference_mode()
def predict_logits(model, images, batch_size=1000, tta=False, amp_dtype=None, channels_last=False, input_dtype=torch.float32):
    """Return FP32 logits for uint8 `images`; with `tta`, the mean of the image's and its mirror's logits."""
    device = images.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    outputs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size], dtype=input_dtype, memory_format=memory_format)
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with autocast:
            logits = model(x).float()
            if tta:
                # Flip averaging runs the model twice per image, so it doubles inference cost.
                logits = (logits + model(x.flip(-1)).float()) / 2
        outputs.append(logits)
    return torch.cat(outputs)


def accuracy_report(logits, labels):
    """Overall and per-class accuracy (fractions in [0, 1]) from logits and labels."""
    predictions = logits.argmax(1)
    hits = predictions == labels
    per_class = []
    for c in range(NUM_CLASSES):
        mask = labels == c
        per_class.append(hits[mask].float().mean().item() if mask.any() else float("nan"))
    return {"accuracy": hits.float().mean().item(), "per_class": per_class, "count": len(labels)}


def evaluate(model, split, batch_size=1000, tta=False, amp_dtype=None, channels_last=False, input_dtype=torch.float32):
    """Accuracy of `model` over every image of `split` (the whole 10,000-image test set by default)."""
    was_training = model.training
    model.eval()
    logits = predict_logits(model, split.images, batch_size, tta, amp_dtype, channels_last, input_dtype)
    model.train(was_training)
    report = accuracy_report(logits, split.labels)
    report["tta"] = tta
    return report
