"""Batched training augmentation on the images' own device (no per-image PIL pipeline)."""

import torch
import torch.nn.functional as F


def random_crop_flip(images, padding=2, flip=True, generator=None, size=None, flip_mask=None):
    """Randomly translate each image by up to `padding` pixels and flip half of them horizontally.

    `images` is a uint8 or float (B, C, H, W) batch. The translation is a random crop of the
    reflect-padded image, so no black border enters training. With `size`, the crop is
    `size` x `size` instead of H x W: objects keep their scale but less of the image is seen.
    Labels are untouched because the output keeps the batch order. A (B,) bool `flip_mask`
    chooses which images to mirror instead of a random half (`flip` is then ignored).
    """
    batch, _, height, width = images.shape
    device = images.device
    crop = size or height
    if crop > height + 2 * padding or crop > width + 2 * padding:
        raise ValueError(f"crop size {crop} exceeds the padded image ({height}+2*{padding} x {width}+2*{padding})")
    if padding > 0 or crop != height:
        # Reflect padding is not implemented for uint8, so pad in float and cast back.
        padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype) if padding else images
        dy = torch.randint(0, height + 2 * padding - crop + 1, (batch,), device=device, generator=generator)
        dx = torch.randint(0, width + 2 * padding - crop + 1, (batch,), device=device, generator=generator)
        rows = (dy[:, None] + torch.arange(crop, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(crop, device=device))[:, None, None, :]
        index = torch.arange(batch, device=device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[index, channels, rows, cols]
    if flip_mask is not None:
        if flip_mask.shape != (batch,) or flip_mask.dtype != torch.bool:
            raise ValueError(f"flip_mask is invalid: expected a bool tensor of shape ({batch},), got {flip_mask.dtype} {tuple(flip_mask.shape)}")
        mirrored = flip_mask
    elif flip:
        mirrored = torch.rand(batch, device=device, generator=generator) < 0.5
    if flip_mask is not None or flip:
        images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    return images
