"""Host image preprocessing (docs/design.md §3.2.4): PIL reference parity, BGR, augmentation, bad inputs."""

import io

import numpy as np
import pytest
from PIL import Image

from lav2_jax.data import images
from lav2_jax.data.testing import image_bytes

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _reference(img: Image.Image, new_size, box) -> np.ndarray:
    """Written out by hand for each case: PIL bicubic resize to `new_size`, crop `box`, /255, CLIP normalise."""
    arr = np.asarray(img.resize(new_size, Image.Resampling.BICUBIC).crop(box), np.float32) / 255.0
    return (arr - MEAN) / STD


@pytest.mark.parametrize("size_in, new_size, box", [
    ((300, 200), (336, 224), (56, 0, 280, 224)),      # landscape: long side int(224*300/200)=336, left (336-224)/2
    ((200, 300), (224, 336), (0, 56, 224, 280)),      # portrait
    ((401, 225), (399, 224), (88, 0, 312, 224)),      # int(224*401/225)=399, left round(87.5)=88 (half to even)
    ((224, 224), (224, 224), (0, 0, 224, 224)),       # no resize
])
def test_preprocess_equals_pil_reference(size_in, new_size, box):
    data = image_bytes(*size_in, seed=1)
    out = images.preprocess(data, 224)
    ref = _reference(Image.open(io.BytesIO(data)).convert("RGB"), new_size, box)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_bgr_reverses_channels_before_normalisation():
    data = image_bytes(260, 230, seed=2)
    rgb = images.preprocess(data, 224, "rgb")
    bgr = images.preprocess(data, 224, "bgr")
    # Pixels in [0, 1]: the BGR image is the RGB image with channels reversed (same mean/std by position).
    np.testing.assert_allclose(bgr * STD + MEAN, (rgb * STD + MEAN)[..., ::-1], atol=1e-6)
    assert not np.allclose(bgr, rgb[..., ::-1])  # it is not a flip of the *normalised* RGB output
    with pytest.raises(ValueError, match="channel_order"):
        images.preprocess(data, 224, "rgba")


def test_augment_is_a_random_resized_crop_and_deterministic():
    data = image_bytes(320, 240, seed=3)
    a = images.augment(data, np.random.default_rng(7), 224)
    b = images.augment(data, np.random.default_rng(7), 224)
    c = images.augment(data, np.random.default_rng(8), 224)
    assert a.shape == (224, 224, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = images.random_resized_crop_box(320, 240, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 320 and bottom <= 240
        assert 0.9 * 320 * 240 * 0.97 <= w * h <= 320 * 240  # area fraction 0.9–1.0 (up to rounding)
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # The crop equals PIL's bicubic resize of the box drawn by the same RNG state.
    box = images.random_resized_crop_box(320, 240, np.random.default_rng(7))
    img = Image.open(io.BytesIO(data)).convert("RGB")
    ref = np.asarray(img.resize((224, 224), Image.Resampling.BICUBIC, box=box), np.float32) / 255.0
    np.testing.assert_allclose(a, (ref - MEAN) / STD, atol=1e-6)


def test_fallback_crop_for_extreme_aspect_ratio():
    # 1000x10: no box with aspect ratio in [3/4, 4/3] covers 90% of the area → central crop at ratio 4/3.
    box = images.random_resized_crop_box(1000, 10, np.random.default_rng(0))
    assert box == (493, 0, 506, 10)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb_array(seed=0, w=40, h=30):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_handled_modes():
    rgb = _rgb_array()
    # grayscale: replicated channels
    gray = images.decode(_save(Image.fromarray(rgb[..., 0]), "PNG"))
    assert gray.mode == "RGB"
    g = np.asarray(gray)
    np.testing.assert_array_equal(g[..., 0], rgb[..., 0])
    np.testing.assert_array_equal(g[..., 1], g[..., 2])
    # CMYK (lossless TIFF): PIL's conversion recovers the RGB values
    cmyk = images.decode(_save(Image.fromarray(rgb).convert("CMYK"), "TIFF"))
    np.testing.assert_array_equal(np.asarray(cmyk), rgb)
    # CMYK JPEG decodes to RGB too
    assert images.decode(_save(Image.fromarray(rgb).convert("CMYK"), "JPEG")).mode == "RGB"
    # RGBA: alpha discarded, colour kept
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)
    np.testing.assert_array_equal(np.asarray(images.decode(_save(Image.fromarray(rgba, "RGBA"), "PNG"))), rgb)
    # palette with transparency
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    assert images.decode(_save(pal, "PNG", transparency=0)).mode == "RGB"


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = np.asarray(images.decode(_save(img, "PNG")))
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128, 255]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("case", ["zero_bytes", "corrupt", "truncated_jpeg", "truncated_png", "missing", "float"])
def test_rejected_inputs_name_the_file(tmp_path, case):
    path = tmp_path / f"{case}.img"
    full = image_bytes(64, 48, seed=4, fmt="JPEG")
    content = {
        "zero_bytes": b"",
        "corrupt": b"this is not an image at all" * 10,
        "truncated_jpeg": full[: len(full) // 2],
        "truncated_png": image_bytes(64, 48, seed=4)[:200],
        "float": _save(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF"),
    }
    if case != "missing":
        path.write_bytes(content[case])
    with pytest.raises(images.ImageError, match=str(path)):
        images.preprocess(str(path))
    with pytest.raises(images.ImageError, match="record-7"):  # bytes input: the caller's label is named
        if case != "missing":
            images.preprocess(content[case], name="record-7")
        else:
            images.preprocess(str(path), name="record-7")


def test_decompression_bomb_rejected(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(images.ImageError, match="bomb.png: image too large"):
        images.decode(image_bytes(64, 48), name="bomb.png")


def test_exif_orientation_applied():
    img = Image.fromarray(_rgb_array(w=40, h=30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = images.decode(_save(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (30, 40)
