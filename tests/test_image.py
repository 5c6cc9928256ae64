"""The image processor's input handling and its errors, and the patch embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmjepa import MMJepaProcessor
from mmjepa.modalities.image import ImageConfig, ImageProcessor, PatchEmbed

from conftest import tiny_image_config

rng = np.random.default_rng(0)


def _pil(mode: str, size=(40, 30)) -> Image.Image:
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    return Image.fromarray(arr, "RGBA").convert(mode)


@pytest.mark.parametrize(
    "image",
    [
        _pil("RGB"), _pil("RGBA"), _pil("L"), _pil("LA"), _pil("P"), _pil("CMYK"), _pil("I;16"), _pil("1"),
        rng.integers(0, 256, (20, 25), dtype=np.uint8),  # grayscale HW
        rng.integers(0, 256, (20, 25, 3), dtype=np.uint8),  # HWC
        rng.integers(0, 256, (20, 25, 4), dtype=np.uint8),  # HWC with alpha
        rng.random((20, 25, 3), dtype=np.float32),  # float HWC in [0, 1]
        torch.rand(3, 17, 50),  # CHW tensor
        torch.randint(0, 256, (1, 9, 9), dtype=torch.uint8),  # single channel CHW
        np.zeros((1, 1, 3), dtype=np.uint8),  # a single pixel
        rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8),  # large
    ],
    ids=["rgb", "rgba", "l", "la", "p", "cmyk", "i16", "bilevel", "np-hw", "np-hwc", "np-hwc-alpha", "np-float",
         "t-chw", "t-1chw", "pixel", "large"],
)
def test_processor_accepts(image):
    proc = ImageProcessor(ImageConfig(image_size=32, patch_size=4))
    out = proc(image)["pixel_values"]
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_batches_and_lists():
    proc = ImageProcessor(ImageConfig(image_size=(32, 48), patch_size=8))
    assert proc(torch.rand(5, 3, 20, 20))["pixel_values"].shape == (5, 3, 32, 48)
    assert proc([_pil("RGB"), _pil("L", (8, 8))])["pixel_values"].shape == (2, 3, 32, 48)


def test_transparent_pixels_become_background():
    proc = ImageProcessor(ImageConfig(image_size=8, patch_size=4, image_mean=(0, 0, 0), image_std=(1, 1, 1)))
    clear = np.zeros((8, 8, 4), dtype=np.uint8)  # black but fully transparent
    assert torch.allclose(proc(clear)["pixel_values"], torch.ones(1, 3, 8, 8), atol=1e-6)


def test_normalisation_and_centre_crop():
    cfg = ImageConfig(image_size=4, patch_size=2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    img = np.zeros((4, 8, 3), dtype=np.uint8)
    img[:, 2:6] = 255  # a white band in the middle: the centre crop keeps only it
    out = ImageProcessor(cfg)(img)["pixel_values"]
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)


def test_grayscale_model():
    cfg = ImageConfig(image_size=8, patch_size=4, num_channels=1, image_mean=(0.5,), image_std=(0.5,))
    assert ImageProcessor(cfg)(_pil("RGB"))["pixel_values"].shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("no/such/file.png", "image file not found"),
        (b"not an image", "could not decode image bytes"),
        (12345, "PIL image, numpy array or torch tensor"),
        (np.zeros((2, 3, 4, 5, 6)), "shape"),
        (np.zeros((10, 10, 7)), "channels"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((4, 4), dtype=np.complex64), "complex|dtype"),
        (np.full((4, 4), 70000, dtype=np.int32), "0..65535"),
        (np.array([["a", "b"]], dtype=object), "numeric"),
        (np.full((4, 4, 3), -5.0, dtype=np.float32), r"\[0, 1\]"),
        ([], "no images"),
    ],
)
def test_processor_errors(bad, match):
    proc = ImageProcessor(ImageConfig(image_size=8, patch_size=4))
    with pytest.raises(ValueError, match=match):
        proc(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=30, patch_size=8), "multiple of patch_size"),
        (dict(num_channels=2), "num_channels"),
        (dict(resize="stretch"), "resize"),
        (dict(mask="checkerboard"), "mask"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageConfig(**kwargs)


def test_patch_embed_shapes_and_errors():
    embed = PatchEmbed(ImageConfig(image_size=(16, 24), patch_size=8), dim=16)
    assert embed.num_tokens == 6 and embed.coords.shape == (6, 2)
    assert embed(torch.randn(2, 3, 16, 24)).shape == (2, 6, 16)
    for bad in (torch.randn(2, 3, 24, 16), torch.randn(3, 16, 24), torch.randn(2, 1, 16, 24)):
        with pytest.raises(ValueError, match="pixel_values must have shape"):
            embed(bad)


def test_mmjepa_processor_routes_to_modalities():
    proc = MMJepaProcessor.from_config(tiny_image_config())
    assert proc(images=_pil("RGB"))["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="at least one"):
        proc()
    with pytest.raises(ValueError, match=r"no audio= \(audio\) modality"):
        proc(audio=np.zeros(16000, dtype=np.float32), sampling_rate=16000)


def _mode_image(mode: str, h: int, w: int) -> Image.Image:
    """A real-valued picture (a gradient with a bright square) in PIL ``mode``; 16-bit and float
    modes carry values beyond 8 bits."""
    yy, xx = np.mgrid[0:h, 0:w]
    grey = ((yy * 7 + xx * 3) % 256).astype(np.uint8)
    grey[h // 4 : h // 2, w // 4 : w // 2] = 255
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)  # mode I;16
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 200, "I")
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255.0, "F")
    rgba = np.stack([grey, grey[::-1], grey[:, ::-1], np.where(grey > 128, 255, 60).astype(np.uint8)], -1)
    return Image.fromarray(rgba, "RGBA").convert(mode)


SIDES = [(16, 20), (32, 32), (32, 48), (48, 32), (50, 60)]  # below, equal, one side equal, above


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "I;16", "I", "1", "F", "RGB", "RGBA", "CMYK", "YCbCr"])
@pytest.mark.parametrize("resize", ["shortest_edge", "exact"])
@pytest.mark.parametrize("channels", [3, 1])
def test_every_pil_mode_at_every_size(mode, resize, channels):
    """Grey, grey+alpha, palette, 16/32-bit, bilevel and float images become model inputs at sizes
    below, equal to and above the target (an equal side used to crash inside torch)."""
    mean, std = ((0.5,), (0.5,)) if channels == 1 else ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    proc = ImageProcessor(ImageConfig(image_size=32, patch_size=8, resize=resize, num_channels=channels,
                                      image_mean=mean, image_std=std))
    for h, w in SIDES:
        img = _mode_image(mode, h, w)
        out = proc(img)["pixel_values"]
        assert out.shape == (1, channels, 32, 32), (mode, h, w)
        assert torch.isfinite(out).all() and out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5
        assert out.std() > 0.05, (mode, h, w)  # the picture survived (not a constant image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, bool, np.float32])
@pytest.mark.parametrize("hw", SIDES)
def test_grey_arrays_at_every_size(dtype, hw):
    h, w = hw
    arr = (np.arange(h * w).reshape(h, w) % 200).astype(np.float64)
    arr = {np.uint8: arr.astype(np.uint8), np.uint16: (arr * 300).astype(np.uint16), bool: arr > 100,
           np.float32: (arr / 200).astype(np.float32)}[dtype]
    out = ImageProcessor(ImageConfig(image_size=32, patch_size=8))(arr)["pixel_values"]
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    assert torch.equal(out[0, 0] * 0.229 + 0.485, out[0, 0] * 0.229 + 0.485)  # grey: one value per pixel
    r, g = out[0, 0] * 0.229 + 0.485, out[0, 1] * 0.224 + 0.456
    assert torch.allclose(r, g, atol=1e-5)


def test_image_paths_are_accepted(tmp_path):
    img = _mode_image("RGB", 40, 30)
    img.save(tmp_path / "a.png")
    proc = ImageProcessor(ImageConfig(image_size=32, patch_size=8))
    direct = proc(img)["pixel_values"]
    for path in (tmp_path / "a.png", str(tmp_path / "a.png")):
        assert torch.equal(proc(path)["pixel_values"], direct)
    assert torch.equal(proc([str(tmp_path / "a.png"), img])["pixel_values"][1], direct[0])
    assert torch.equal(proc((tmp_path / "a.png").read_bytes())["pixel_values"], direct)


def test_training_augmentation_is_seeded_and_absent_at_evaluation():
    cfg = ImageConfig(image_size=32, patch_size=8, crop_scale=(0.3, 1.0), hflip=True)
    img = _mode_image("RGB", 60, 80)
    train, plain = ImageProcessor(cfg, train=True), ImageProcessor(cfg)
    assert train.augments and not plain.augments
    a = train(img, generator=torch.Generator().manual_seed(0))["pixel_values"]
    b = train(img, generator=torch.Generator().manual_seed(0))["pixel_values"]
    c = train(img, generator=torch.Generator().manual_seed(1))["pixel_values"]
    assert a.shape == (1, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(plain(img)["pixel_values"], train(img)["pixel_values"])  # no generator: no augmentation
    with pytest.raises(ValueError, match="crop_scale"):
        ImageConfig(crop_scale=(0.0, 1.0))
