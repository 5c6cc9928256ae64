"""Image modality: processor (decode, RGB, resize, crop, normalise), patch embedding, masks."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from mmjepa.masking import CORNERS, MultiBlock2D, RandomPatch

from .base import GridPatchEmbed, Modality, options_of, pair, register_modality

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageConfig:
    """Options of the image modality (stored under ``config.modalities["image"]``)."""

    image_size: Any = 224  # an int, or (height, width)
    patch_size: int = 16
    num_channels: int = 3
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    resize: str = "shortest_edge"  # "shortest_edge" (resize then centre crop) or "exact" (squash)
    background: tuple[int, int, int] = (255, 255, 255)  # fill behind transparent pixels
    mask: str = "multiblock"  # "multiblock" (I-JEPA) or "random"
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 4
    allow_overlap: bool = False
    # where a block's top-left corner may go: "reference" (I-JEPA's draw, which never reaches the
    # last row and column of patches) or "full" (every patch can be a target or context)
    mask_corners: str = "reference"
    mask_ratio: float = 0.6  # for mask="random"
    # training augmentation (the data pipeline only; never at evaluation): a random resized crop
    # covering crop_scale of the image with an aspect ratio in crop_ratio (I-JEPA: scale 0.3-1.0),
    # and a horizontal flip with probability 0.5
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: bool = False

    def __post_init__(self):
        h, w = pair(self.image_size)
        if self.patch_size <= 0 or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {self.num_channels}")
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError("image_mean and image_std need one value per channel")
        if self.resize not in ("shortest_edge", "exact"):
            raise ValueError(f"resize must be 'shortest_edge' or 'exact', got {self.resize!r}")
        if self.mask not in ("multiblock", "random"):
            raise ValueError(f"mask must be 'multiblock' or 'random', got {self.mask!r}")
        if self.mask_corners not in CORNERS:
            raise ValueError(f"mask_corners must be one of {CORNERS}, got {self.mask_corners!r}")
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")

    @property
    def grid(self) -> tuple[int, int]:
        h, w = pair(self.image_size)
        return h // self.patch_size, w // self.patch_size


# ----------------------------------------------------------------------------- decoding
def open_image(src: str | Path | bytes | bytearray) -> Image.Image:
    """A file path or encoded bytes -> a loaded PIL image (ValueError when missing or undecodable)."""
    if isinstance(src, (str, Path)):
        if not Path(src).is_file():
            raise ValueError(f"image file not found: {src}")
        name, fp = str(src), src
    else:
        name, fp = "image bytes", io.BytesIO(bytes(src))
    try:
        img = Image.open(fp)
        img.load()
    except UnidentifiedImageError:
        raise ValueError(f"could not decode {name}: not an image file of a known format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"could not decode {name}: {err}") from None
    return img


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> an array of one of the layouts the processor takes: L/LA/RGB/RGBA as they
    are, palette images through RGBA (they may carry transparency), 16/32-bit grey as integers,
    bilevel as bool, float as float, every other mode (CMYK, YCbCr, ...) through RGB."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA", "1", "F") or mode.startswith("I"):
        arr = np.asarray(image)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return arr
    if mode in ("P", "PA", "RGBa", "La"):
        return np.asarray(image.convert("LA" if mode == "La" else "RGBA"))
    return np.asarray(image.convert("RGB"))


def _array_to_unit(arr: np.ndarray) -> torch.Tensor:
    """A numeric array -> a tensor: uint8 and bool as they are, wider integers scaled by their
    range (uint16 and 16-bit-valued int32 -> 0..1), floats as they are (range checked later)."""
    if arr.dtype in (np.uint8, np.bool_) or np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(np.array(arr, copy=True))
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0:
            raise ValueError(f"integer images must not be negative, got a minimum of {lo}")
        scale = 255.0 if hi <= 255 else 65535.0 if hi <= 65535 else None
        if scale is None:
            raise ValueError(f"integer images must lie in 0..65535, got a maximum of {hi}")
        return torch.from_numpy(np.asarray(arr.astype(np.float32) / scale))
    raise ValueError(f"image arrays must be numeric, got dtype {arr.dtype}")



class PatchEmbed(GridPatchEmbed):
    """(B, C, H, W) pixels -> (B, N, D) patch tokens with fixed 2-D sin-cos positions added."""

    def __init__(self, cfg: ImageConfig, dim: int, add_positions: bool = True):
        super().__init__(cfg.grid, cfg.num_channels, cfg.patch_size, dim, add_positions)
        self.cfg = cfg

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        expected = (self.cfg.num_channels, *pair(self.cfg.image_size))
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(pixel_values.shape)}; use MMJepaProcessor / ImageProcessor to prepare images"
            )
        return self.tokens(pixel_values)


class MMJepaImageProcessor(BaseImageProcessor):
    """Turns images into normalised ``pixel_values`` (B, C, H, W) float32.

    Accepts a file path (str / Path), encoded bytes, a PIL image of any mode, a numpy array
    ((H, W), (H, W, C) or (C, H, W) with C in 1..4; uint8 / uint16 / bool, or float in 0..1),
    a torch tensor (same layouts, or a (B, C, H, W) batch), or a list of these. Any mode becomes
    the configured channels (transparent pixels are composited on ``background``), then the image
    is resized (shortest edge + centre crop, or exact) and normalised.

    A transformers image processor: ``save_pretrained`` / ``from_pretrained`` /
    ``AutoImageProcessor.from_pretrained`` (after ``import mmjepa``) keep its options, which are the
    image modality's (:class:`ImageConfig`).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, cfg: ImageConfig | None = None, train: bool = False, **options):
        super().__init__()
        self.cfg = cfg or ImageConfig(**options_of(ImageConfig, options))
        # with ``train`` the configured augmentation applies (drawn from the generator each call gets)
        self.augments = train and (self.cfg.crop_scale is not None or self.cfg.hflip)
        self.size = pair(self.cfg.image_size)
        self.mean = torch.tensor(self.cfg.image_mean).view(-1, 1, 1)
        self.std = torch.tensor(self.cfg.image_std).view(-1, 1, 1)

    # -- one image -> (C, H, W) float in [0, 1], with alpha kept for compositing
    def _to_tensor(self, image: Any) -> torch.Tensor:
        if isinstance(image, (str, Path, bytes, bytearray)):
            image = open_image(image)
        if isinstance(image, Image.Image):
            image = _pil_to_array(image)
        if isinstance(image, np.generic):  # a numpy scalar: an array of shape (), refused below
            image = np.asarray(image)
        if isinstance(image, np.ndarray):
            if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
                raise ValueError(f"image arrays must be numeric, got dtype {image.dtype}")
            image = _array_to_unit(image)
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"expected a path, bytes, PIL image, numpy array or torch tensor, "
                             f"got {type(image).__name__}")
        if image.is_complex():
            raise ValueError(f"image dtype {image.dtype} is not supported; use uint8 (0..255) or float (0..1)")
        if image.dim() == 2:
            image = image.unsqueeze(0)
        elif image.dim() == 3:
            if image.shape[-1] in (1, 2, 3, 4) and image.shape[0] not in (1, 2, 3, 4):
                image = image.permute(2, 0, 1)  # HWC -> CHW
            elif image.shape[-1] in (1, 2, 3, 4) and image.shape[0] in (1, 2, 3, 4) and image.shape[-1] < image.shape[0]:
                image = image.permute(2, 0, 1)  # ambiguous tiny image: trust the smaller trailing axis
        else:
            raise ValueError(
                f"expected an image of shape (H, W), (H, W, C) or (C, H, W) with C in (1, 2, 3, 4), "
                f"got shape {tuple(image.shape)}"
            )
        if image.shape[0] not in (1, 2, 3, 4):
            raise ValueError(f"expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, "
                             f"got shape {tuple(image.shape)}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"image has an empty side: shape {tuple(image.shape)}")
        if image.dtype == torch.bool:
            image = image.float()
        elif image.dtype == torch.uint8:
            image = image.float() / 255.0
        else:
            image = image.float()
            if not torch.isfinite(image).all():
                raise ValueError("image contains NaN or infinite values")
            if image.min() < -1e-3 or image.max() > 1.0 + 1e-3:
                if image.max() <= 255.0 and image.min() >= 0:
                    image = image / 255.0  # integer-valued images given as floats/ints
                else:
                    raise ValueError(f"float images must lie in [0, 1] (or 0..255); got [{image.min()}, {image.max()}]")
        return self._to_rgb(image)

    def _to_rgb(self, image: torch.Tensor) -> torch.Tensor:
        c = image.shape[0]
        if c in (2, 4):  # composite alpha on the background colour
            alpha = image[-1:]
            image = image[:-1]
            bg = torch.tensor(self.cfg.background, dtype=torch.float32).view(-1, 1, 1)[: image.shape[0]] / 255.0
            image = image * alpha + bg * (1 - alpha)
        if self.cfg.num_channels == 3 and image.shape[0] == 1:
            image = image.repeat(3, 1, 1)  # a real copy: later steps may write in place
        elif self.cfg.num_channels == 1 and image.shape[0] == 3:
            image = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        return image

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        th, tw = self.size
        h, w = image.shape[-2:]
        if self.cfg.resize == "exact":
            size = (th, tw)
        else:
            scale = max(th / h, tw / w)
            size = (max(th, round(h * scale)), max(tw, round(w * scale)))
        if size != (h, w):
            image = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (image.shape[-2] - th) // 2, (image.shape[-1] - tw) // 2
        return image[:, top : top + th, left : left + tw].clamp(0.0, 1.0)

    def _augment(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A random resized crop (torchvision's sampling: area and log-uniform aspect ratio, ten
        tries, else the whole image) resized exactly to the target, then a random flip."""
        h, w = image.shape[-2:]
        if self.cfg.crop_scale is not None:
            lo, hi = self.cfg.crop_scale
            log_r = torch.log(torch.tensor(self.cfg.crop_ratio, dtype=torch.float64))
            box = (0, 0, h, w)
            for _ in range(10):
                area = h * w * (lo + (hi - lo) * float(torch.rand(1, generator=g)))
                ratio = float(torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(1, generator=g, dtype=torch.float64)))
                ch, cw = round((area / ratio) ** 0.5), round((area * ratio) ** 0.5)
                if 0 < ch <= h and 0 < cw <= w:
                    top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                    left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                    box = (top, left, ch, cw)
                    break
            top, left, ch, cw = box
            image = F.interpolate(image[None, :, top : top + ch, left : left + cw], size=self.size, mode="bicubic",
                                  antialias=True, align_corners=False)[0].clamp(0.0, 1.0)
        else:
            image = self._resize(image)
        if self.cfg.hflip and float(torch.rand(1, generator=g)) < 0.5:
            image = image.flip(-1)
        return image

    def preprocess(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """One image -> (C, H, W) normalised float32 (augmented when the processor trains)."""
        image = self._to_tensor(image)
        image = self._augment(image, generator) if self.augments and generator is not None else self._resize(image)
        return (image - self.mean) / self.std

    def __call__(self, images: Any, return_tensors: str | None = "pt",
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        return BatchFeature({"pixel_values": torch.stack([self.preprocess(im, generator) for im in images])})

    def to_dict(self) -> dict[str, Any]:
        """The options (what ``save_pretrained`` writes), JSON-ready."""
        return {**dataclasses.asdict(self.cfg), "image_processor_type": type(self).__name__}


ImageProcessor = MMJepaImageProcessor  # the name used inside mmjepa


@register_modality
class ImageModality(Modality):
    name = "image"
    input_key = "pixel_values"
    config_class = ImageConfig
    embed_class = PatchEmbed
    processor_class = ImageProcessor
    processor_arg = "images"
    hf_role = "image_processor"
    extensions = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

    @classmethod
    def build_processor(cls, cfg: ImageConfig, train: bool = False, **kwargs: Any) -> ImageProcessor:
        return ImageProcessor(cfg, train=train, **kwargs)

    @classmethod
    def decode(cls, data: bytes, ext: str, cfg: ImageConfig) -> Image.Image:
        """Encoded bytes -> a PIL image; one much larger than the model input is box-reduced by an
        integer factor (keeping >= 2x the input size) before the processor's antialiased resize:
        the same result quality for a fraction of the resize work."""
        img = open_image(data)
        h, w = pair(cfg.image_size)
        factor = min(img.size[1] // (2 * h), img.size[0] // (2 * w))
        if factor >= 2:
            if img.mode in ("P", "PA", "1"):  # palette / bilevel images cannot be averaged
                img = img.convert("RGBA" if img.mode != "1" else "L")
            img = img.reduce(factor)
        return img

    @classmethod
    def build_mask_sampler(cls, cfg: ImageConfig):
        if cfg.mask == "random":
            return RandomPatch(cfg.grid[0] * cfg.grid[1], cfg.mask_ratio)
        return MultiBlock2D(
            grid=cfg.grid,
            num_targets=cfg.num_targets,
            target_scale=cfg.target_scale,
            target_aspect=cfg.target_aspect,
            context_scale=cfg.context_scale,
            min_keep=cfg.min_keep,
            allow_overlap=cfg.allow_overlap,
            corners=cfg.mask_corners,
        )
