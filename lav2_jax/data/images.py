"""Host-side image decoding, CLIP preprocessing and training augmentation (numpy + PIL, no TensorFlow).

Implements docs/design.md §3.2.4:

* evaluation: resize the short side to `size` (bicubic), center crop `size × size`, scale to [0, 1],
  normalise with the CLIP mean/std;
* training: RandomResizedCrop(`size`, scale 0.9–1.0, ratio 3/4–4/3, bicubic) driven by an explicit
  `numpy.random.Generator`, then the same scaling and normalisation.

Output of `preprocess` / `augment`: float32 `[size, size, 3]`, channels in `channel_order`.
`aspect_ratio` (LLaVA's `image_aspect_ratio`): `square` as above; `pad` first pastes the image centred on a square
canvas of its longer side filled with the mean colour `int(255·mean)` = (122, 116, 104) (`expand_to_square`).

Channel order. The released checkpoints saw images read by OpenCV and never converted, i.e. BGR pixels fed to
a normalisation whose mean/std are listed in RGB order (§3.2.4). `channel_order="bgr"` reproduces exactly that:
the channels are reversed *before* normalisation and `CLIP_MEAN[c]`/`CLIP_STD[c]` are applied to channel
position `c`. So `bgr * std + mean == reverse(rgb * std + mean)`.

Input handling (every outcome below is tested in tests/test_images.py):

=====================  =========================================================================================
input                  outcome
=====================  =========================================================================================
RGB / palette          decoded as is (palette expanded)
grayscale (L, 1)       handled: the gray value is replicated to three channels
16-bit gray (I;16*)    handled: scaled by 255/65535 (not clipped, as a plain PIL ``convert`` would do);
                       32-bit integer mode ``I`` is assumed to hold 16-bit data the same way
CMYK (e.g. JPEG)       handled: PIL's CMYK→RGB conversion
RGBA / LA / P+alpha    handled: alpha is discarded (as OpenCV's ``IMREAD_COLOR`` did for the release)
EXIF orientation       applied (as OpenCV's ``imread`` does)
float mode ``F``       rejected: ``ImageError`` (no defined range)
zero-byte file         rejected: ``ImageError`` naming the file
corrupt / not image    rejected: ``ImageError`` naming the file
truncated file         rejected: ``ImageError`` naming the file (truncated images are never padded silently)
zero width/height      rejected: ``ImageError`` naming the file
decompression bomb     rejected: ``ImageError`` naming the file (PIL's pixel limit)
missing file           rejected: ``ImageError`` naming the file
=====================  =========================================================================================
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHANNEL_ORDERS = ("rgb", "bgr")
TRAIN_SCALE = (0.9, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)
ASPECT_RATIOS = ("square", "pad")
PAD_FILL = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104): LLaVA-1.5's `pad` background

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]


class ImageError(ValueError):
    """An image that cannot be used; the message names the file (or the record it came from)."""


def _label(src: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return "<image bytes>"


def decode(src: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode a PIL-readable file or bytes into an 8-bit RGB `PIL.Image` (see the module table for modes).

    `name` labels errors (default: the path, or "<image bytes>"). Raises `ImageError` for unusable input.
    """
    label = _label(src, name)
    if isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"{label}: cannot read image file: {e.strerror or e}") from None
    else:
        data = bytes(src)
    if not data:
        raise ImageError(f"{label}: empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # forces a full decode: truncated data raises here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label}: image too large: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{label}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{label}: corrupt or truncated image: {e}") from None
    if img.width <= 0 or img.height <= 0:
        raise ImageError(f"{label}: image has zero size {img.width}x{img.height}")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject an otherwise fine image
        pass
    return _to_rgb(img, label)


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        raise ImageError(f"{label}: floating-point image (mode F) has no defined range; convert it to 8 or 16 bit")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    # RGBA, LA, PA, L, 1, CMYK, YCbCr, LAB, HSV, P: PIL's conversions; alpha is dropped.
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"{label}: unsupported image mode {mode}: {e}") from None


def short_side_resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the short side equal to `size`, the long side `int(size * long / short)`."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """PIL box (left, top, right, bottom) of the centred `size × size` crop; offsets round half to even."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the short side to `size`, then the centred `size × size` crop (uint8 RGB image)."""
    w, h = short_side_resize_size(img.width, img.height, size)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    return img.crop(center_crop_box(w, h, size))


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = TRAIN_SCALE,
    ratio: tuple[float, float] = TRAIN_RATIO,
) -> tuple[int, int, int, int]:
    """Box (left, top, right, bottom) of a RandomResizedCrop: area fraction ~ U(scale), log aspect ~ U(log ratio).

    Ten attempts; when none fits, the whole image cropped centrally to the nearest allowed aspect ratio.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """The training crop of docs/design.md §3.2.4: random box, then bicubic resize of the box to `size × size`."""
    box = random_resized_crop_box(img.width, img.height, rng)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)


def normalize(rgb_uint8: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """uint8 `[H, W, 3]` RGB → float32 `[H, W, 3]`: /255, optional reversal to BGR, then (x - mean) / std."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    x = np.asarray(rgb_uint8, dtype=np.float32) * np.float32(1.0 / 255.0)
    if channel_order == "bgr":
        x = x[..., ::-1]
    mean = np.asarray(CLIP_MEAN, np.float32)
    std = np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def expand_to_square(img: Image.Image, fill: tuple[int, int, int] = PAD_FILL) -> Image.Image:
    """LLaVA-1.5's `image_aspect_ratio="pad"`: the image centred on a square canvas of its longer side filled
    with `fill` (offset `(long - short) // 2`); square images are returned as they are."""
    w, h = img.size
    if w == h:
        return img
    canvas = Image.new(img.mode, (max(w, h),) * 2, fill)
    canvas.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return canvas


def _aspect(img: Image.Image, aspect_ratio: str) -> Image.Image:
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
    return expand_to_square(img) if aspect_ratio == "pad" else img


def preprocess(src: ImageSource | Image.Image, size: int = 224, channel_order: str = "rgb", *,
               name: str | None = None, aspect_ratio: str = "square") -> np.ndarray:
    """Evaluation preprocessing: decode → resize short side → center crop → normalise. float32 `[size, size, 3]`.

    `aspect_ratio="pad"` first pads to a square with the mean colour (`expand_to_square`, LLaVA-1.5); `square`
    (default) does not.
    """
    img = _aspect(src if isinstance(src, Image.Image) else decode(src, name=name), aspect_ratio)
    return normalize(np.asarray(resize_center_crop(img, size)), channel_order)


def augment(src: ImageSource | Image.Image, rng: np.random.Generator, size: int = 224, channel_order: str = "rgb",
            *, name: str | None = None, aspect_ratio: str = "square") -> np.ndarray:
    """Training preprocessing: decode → (`pad`: expand_to_square) → RandomResizedCrop(scale 0.9–1,
    ratio 3/4–4/3) → normalise. float32 `[size, size, 3]`; deterministic given the state of `rng`.
    """
    img = _aspect(src if isinstance(src, Image.Image) else decode(src, name=name), aspect_ratio)
    return normalize(np.asarray(random_resized_crop(img, size, rng)), channel_order)


def stack_image_slots(per_sample, max_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Image slots of a batch whose samples hold several images: [k_i, H, W, 3] per sample (k_i ≤ max_images) →
    (images float32 [B, max_images, H, W, 3], has_image bool [B, max_images]); sample i's images fill slots
    0..k_i-1, the other slots are zeros marked False."""
    shape = next(x.shape[1:] for x in per_sample)
    images = np.zeros((len(per_sample), max_images) + shape, np.float32)
    has_image = np.zeros((len(per_sample), max_images), np.bool_)
    for i, x in enumerate(per_sample):
        images[i, :len(x)], has_image[i, :len(x)] = x, True
    return images, has_image
