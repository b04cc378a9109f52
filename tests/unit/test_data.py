"""The one preprocessing path: decoding, colour modes, resize and crop geometry, folders."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.data import ImagePreprocess, labelled_images, list_images, load_image, load_images
from resnet_deploy.errors import DeployError

IDENTITY = ImagePreprocess(resize=64, crop=(64, 64), interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))


def test_values_are_scaled_and_normalised():
    pp = ImagePreprocess(resize=73, crop=(64, 64), interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = pp(Image.new("RGB", (300, 200), (255, 0, 128)))
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 10, 10], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6)


def test_shorter_side_resize_then_centre_crop():
    # left half black, right half white: a centre crop of a landscape image straddles the edge
    image = Image.new("L", (400, 100), 0)
    image.paste(255, (200, 0, 400, 100))
    out = IDENTITY(image.convert("RGB"))
    assert out.shape == (3, 64, 64)
    assert out[0, :, :28].max() < 0.05 and out[0, :, 36:].min() > 0.95  # the edge sits at the crop's centre
    tall = ImagePreprocess(resize=40, crop=(32, 24), interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1))
    assert tall(Image.new("RGB", (50, 500))).shape == (3, 32, 24)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_colour_modes_become_rgb(tmp_path, mode):
    suffix = ".tiff" if mode in ("CMYK", "I;16") else ".png"
    path = tmp_path / f"img{suffix}"
    Image.new(mode, (40, 30)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_bad_files(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DeployError, match="cannot read .* as an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(DeployError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DeployError, match="holds no images"):
        list_images(empty)
    with pytest.raises(DeployError, match="no class folders"):
        labelled_images(empty)


def test_folders_and_parallel_loading(tmp_path):
    for name, colour in [("cat", (255, 0, 0)), ("dog", (0, 255, 0))]:
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (80, 70), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    paths, labels, classes = labelled_images(tmp_path)
    assert classes == ["cat", "dog"] and labels.tolist() == [0, 0, 0, 1, 1, 1] and len(paths) == 6
    batch = load_images(paths, IDENTITY, workers=2)
    assert batch.shape == (6, 3, 64, 64)
    assert batch[0, 0].min() > 0.99 and batch[5, 1].min() > 0.99  # order kept: red cats, then green dogs


def test_batched_keeps_order_and_the_remainder():
    from resnet_deploy.data import batched

    assert batched(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    pieces = batched(np.arange(40).reshape(10, 4), 4)
    assert [len(p) for p in pieces] == [4, 4, 2] and np.array_equal(np.concatenate(pieces), np.arange(40).reshape(10, 4))
    assert batched([], 3) == []


def _preprocess64():
    from resnet_deploy.data import ImagePreprocess

    return ImagePreprocess(resize=64, crop=(64, 64), interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    """16-bit greyscale PNGs came out 99.6% white and float TIFFs black: convert("RGB") clips."""
    from PIL import Image

    from resnet_deploy.data import load_image

    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "f.tif")
    Image.fromarray((ramp * 255).astype(np.uint8)).save(tmp_path / "g8.png")
    eight = np.asarray(load_image(tmp_path / "g8.png"), dtype=np.float64)
    for name in ("g16.png", "f.tif"):
        pixels = np.asarray(load_image(tmp_path / name), dtype=np.float64)
        assert pixels.shape == (64, 64, 3) and np.abs(pixels - eight).max() <= 1.0, name


@pytest.mark.parametrize("make, message", [
    (lambda: (np.arange(64 * 64).reshape(64, 64) * 1000).astype(np.int32), "32-bit integer pixels"),
    (lambda: np.full((64, 64), 3.5, np.float32), "float image with values outside [0, 1]"),
])
def test_images_without_a_standard_range_are_refused(tmp_path, make, message):
    from PIL import Image

    from resnet_deploy.data import load_image

    array = make()
    Image.fromarray(array, mode="F" if array.dtype == np.float32 else "I").save(tmp_path / "x.tif")
    with pytest.raises(DeployError, match=re.escape(message)):
        load_image(tmp_path / "x.tif")


def test_a_fifo_is_refused_not_read_forever(tmp_path):
    import os
    import threading

    from resnet_deploy.data import load_images

    os.mkfifo(tmp_path / "fifo.jpg")
    outcome = []

    def attempt():
        try:
            load_images([tmp_path / "fifo.jpg"], _preprocess64())
        except DeployError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert outcome == [f"image {tmp_path / 'fifo.jpg'} is a FIFO, not a regular file"]


def test_large_images_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    import threading
    import time

    from PIL import Image

    from resnet_deploy import data

    for i in range(4):
        Image.fromarray(np.full((80, 80, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(data, "LARGE_IMAGE_PIXELS", 70 * 70)  # these count as large
    active, peak, lock = [0], [0], threading.Lock()
    real = data.load_image

    def tracked(path):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real(path)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(data, "load_image", tracked)
    batch = data.load_images(sorted(tmp_path.glob("*.png")), _preprocess64(), workers=4)
    assert batch.shape == (4, 3, 64, 64) and peak[0] == 1


def test_extreme_aspect_ratios_cost_what_the_crop_costs(tmp_path):
    """The short side is resized to `resize` with no bound on the long one: a 1 x 500000 PNG would become a
    64 x 32-million image (6 GB) before the crop. Only the crop's window is resampled: a subprocess's peak
    memory stays far below that, and the pixels are those of resizing then cropping (a uniform image stays
    uniform)."""
    import subprocess
    import sys

    path = tmp_path / "thin.png"
    Image.new("RGB", (1, 500_000), (10, 200, 30)).save(path)
    code = ("from resnet_deploy.data import ImagePreprocess, load_image\n"
            "pp = ImagePreprocess(resize=64, crop=(64, 64), interpolation='bilinear', mean=(0, 0, 0), std=(1, 1, 1))\n"
            f"out = pp(load_image({str(path)!r}))\n"
            "print(out.shape, round(float(out[1].min()) * 255), round(float(out[1].max()) * 255), "
            # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest's over exec)
            "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shape, low, high, peak_mb = done.stdout.rsplit(" ", 3)
    assert shape == "(3, 64, 64)" and low == high == "200"
    assert int(peak_mb) < 1024, f"peak {peak_mb} MB"


def test_formats_outside_the_listed_ones_are_not_decoded(tmp_path):
    """An EPS (Pillow hands it to Ghostscript, where gs exists) is no image here: refused before any decoder
    of it runs."""
    path = tmp_path / "drawing.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    with pytest.raises(DeployError, match=r"cannot read .*drawing.eps as an image: cannot identify image file"):
        load_image(path)
