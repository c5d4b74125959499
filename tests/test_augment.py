import pytest
import torch
import torch.nn.functional as F

from cifar10_latency.augment import random_crop_flip


def random_batch(count=16, dtype=torch.uint8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return images.to(dtype)


def candidate_views(image, padding):
    """Every crop of the reflect-padded image, and the mirror of each crop."""
    padded = F.pad(image[None].float(), (padding,) * 4, mode="reflect")[0].to(image.dtype)
    height, width = image.shape[-2:]
    views = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + height, dx:dx + width]
            views += [crop, crop.flip(-1)]
    return views


def matches_any(output, views):
    return any(torch.equal(output, view) for view in views)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_keeps_shape_dtype(dtype):
    images = random_batch(dtype=dtype)

    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(1))

    assert out.shape == images.shape
    assert out.dtype == dtype


def test_crop_flip_views_own_image():
    images = random_batch(count=24)

    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(2))

    for i in range(len(images)):
        assert matches_any(out[i], candidate_views(images[i], 2)), f"output {i} is no crop or mirror of input {i}"


def test_crop_flip_keeps_batch_order():
    images = random_batch(count=8)

    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(3))

    # With random pixels, no output can be a crop of another image of the batch.
    for i in range(len(images)):
        for j in range(len(images)):
            if i != j:
                assert not matches_any(out[i], candidate_views(images[j], 2))


def test_crop_flip_keeps_image_values():
    # A constant image stays constant under any crop or mirror, so each output must keep
    # the value of the input at the same batch position.
    values = torch.arange(10, 250, 15, dtype=torch.uint8)
    images = values[:, None, None, None].expand(-1, 3, 32, 32).clone()

    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(4))

    for i, value in enumerate(values.tolist()):
        assert torch.all(out[i] == value), f"image {i} lost its constant value {value}"


def test_crop_flip_does_both():
    images = random_batch(count=64)

    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(5))

    shifted = sum(not torch.equal(out[i], images[i]) and not torch.equal(out[i], images[i].flip(-1)) for i in range(64))
    mirrored = sum(torch.equal(out[i], images[i].flip(-1)) for i in range(64))
    assert shifted > 0
    assert mirrored > 0


def test_crop_flip_identity_settings():
    images = random_batch()

    out = random_crop_flip(images, padding=0, flip=False)

    assert torch.equal(out, images)


def test_flip_only_mirrors_or_keeps():
    images = random_batch(count=32)

    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(6))

    flipped = 0
    for i in range(len(images)):
        same = torch.equal(out[i], images[i])
        mirror = torch.equal(out[i], images[i].flip(-1))
        assert same or mirror
        flipped += mirror
    assert 0 < flipped < 32


def test_crop_flip_seeded_determinism():
    images = random_batch()

    first = random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    second = random_crop_flip(images, generator=torch.Generator().manual_seed(7))
    other = random_crop_flip(images, generator=torch.Generator().manual_seed(8))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_crop_flip_input_untouched():
    images = random_batch()
    before = images.clone()

    random_crop_flip(images, generator=torch.Generator().manual_seed(9))

    assert torch.equal(images, before)


def test_crop_size_smaller_output():
    images = random_batch(count=8)

    out = random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(10), size=24)

    assert out.shape == (8, 3, 24, 24)


def test_crop_size_window_of_own_image():
    images = random_batch(count=8)

    out = random_crop_flip(images, padding=0, flip=False, generator=torch.Generator().manual_seed(11), size=24)

    for i in range(len(images)):
        windows = [images[i, :, y:y + 24, x:x + 24] for y in range(9) for x in range(9)]
        assert matches_any(out[i], windows), f"output {i} is no 24x24 window of input {i}"


def test_crop_size_too_large():
    with pytest.raises(ValueError, match="crop size 40"):
        random_crop_flip(random_batch(count=2), padding=2, size=40)


def test_flip_mask_mirrors_chosen_images():
    images = random_batch(count=8)
    mask = torch.tensor([True, False, False, True, True, False, True, False])

    out = random_crop_flip(images, padding=0, flip_mask=mask)

    assert torch.equal(out[mask], images[mask].flip(-1))
    assert torch.equal(out[~mask], images[~mask])


def test_flip_mask_overrides_flip_false():
    images = random_batch(count=4)
    mask = torch.ones(4, dtype=torch.bool)

    out = random_crop_flip(images, padding=0, flip=False, flip_mask=mask)

    assert torch.equal(out, images.flip(-1))


@pytest.mark.parametrize("mask", [torch.ones(3, dtype=torch.bool), torch.ones(4), torch.ones(4, 1, dtype=torch.bool)])
def test_flip_mask_wrong_shape_or_dtype(mask):
    with pytest.raises(ValueError) as error:
        random_crop_flip(random_batch(count=4), padding=0, flip_mask=mask)

    assert "flip_mask" in str(error.value)
