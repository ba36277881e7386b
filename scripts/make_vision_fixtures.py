#!/usr/bin/env python3
"""Image-input fixtures for tests/vision (deterministic; CPU; no hub).

Writes tests/fixtures/vision/:
  images/*.png|*.jpg    small images made here with numpy + Pillow: several sizes and aspect
                        ratios, a tall phone-shaped one, grayscale, RGBA, palette (+tRNS), 16-bit,
                        gray+alpha PNGs; YCbCr, grayscale and CMYK JPEGs; one JPEG with an EXIF
                        orientation tag
  codes/*.u8.z          the processor's pixel_values, one byte per element (see below), zlib
  expected.json         per case: the decoded RGB's FNV-1a 64 hash (PIL Image.open +
                        transformers' convert_to_rgb), the processor's image_grid_thw and
                        pixel_values shape, the code file, and the 256-entry value table per channel

pixel_values are stored losslessly but compactly: after rescale + normalize every element is a
function of (channel, resized uint8 value) alone, so each element is written as the index into the
per-channel table of the processor's own rescale_and_normalize applied to 0..255. The script
asserts that every element equals its table entry bit for bit before writing.

Reference: transformers' Glm4vImageProcessor (the torchvision backend, the default when torchvision
is installed) and Glm4vImageProcessorPil for the "pil" cases; images passed as PIL images opened
from the file bytes, as a server hands them over. Needs torch, torchvision, Pillow, transformers.
"""
import io, json, os, sys, zlib

import numpy as np
import torch
from PIL import Image
from transformers import Glm4vImageProcessor
from transformers.image_transforms import convert_to_rgb
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "vision")


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def scene(w, h, seed):
    """Smooth gradients plus edges and noise, so that resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / (3 + seed) + y / 7)
    g = 255 * x / max(w - 1, 1)
    b = np.where(((x // 5) + (y // 4)) % 2 == 0, 230, 20)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def screen(w, h, seed):
    """A phone screen: flat background, cards, text-like bars; compresses like real screenshots."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (245, 246, 250), np.uint8)
    img[: h // 20] = (30, 110, 220)
    for _ in range(40):
        x0, y0 = rng.integers(0, w - 20), rng.integers(h // 20, h - 10)
        bw, bh = rng.integers(10, w // 2), rng.integers(3, 40)
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 256, 3)
    return img


def png_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def make_images():
    imgs = {}
    imgs["rgb_64x48.png"] = png_bytes(Image.fromarray(scene(64, 48, 1)))
    imgs["phone_45x100.png"] = png_bytes(Image.fromarray(scene(45, 100, 2)))  # 1080x2400 in small
    imgs["wide_150x41.png"] = png_bytes(Image.fromarray(scene(150, 41, 3)))
    imgs["gray_50x70.png"] = png_bytes(Image.fromarray(scene(50, 70, 4)[..., 1], "L"))
    rgba = np.concatenate([scene(60, 60, 5), (np.arange(60 * 60) * 7 % 256).astype(np.uint8).reshape(60, 60, 1)], -1)
    imgs["rgba_60x60.png"] = png_bytes(Image.fromarray(rgba, "RGBA"))
    pal = Image.fromarray(scene(40, 56, 6)).quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    imgs["palette_40x56.png"] = png_bytes(pal)
    trns = bytes([255] * 8 + [0, 128] + [255] * 6)
    imgs["palette_trns_40x56.png"] = png_bytes(pal, transparency=trns)
    rgb16 = (scene(33, 47, 7).astype(np.uint16) * 257 + np.arange(33 * 47 * 3).reshape(47, 33, 3) % 251).astype(">u2")
    imgs["rgb16_33x47.png"] = _png16_rgb(rgb16)
    gray16 = (np.arange(30 * 30).reshape(30, 30) * 73 % 1024).astype(np.uint16)  # values above 255: PIL clips
    imgs["gray16_30x30.png"] = png_bytes(Image.fromarray(gray16))
    la = np.stack([scene(36, 36, 8)[..., 0], (np.arange(36 * 36) % 256).astype(np.uint8).reshape(36, 36)], -1)
    imgs["gray_alpha_36x36.png"] = png_bytes(Image.fromarray(la, "LA"))
    imgs["interlaced_rgb_52x31.png"] = _interlaced(scene(52, 31, 9))
    imgs["photo_120x80.jpg"] = jpeg_bytes(Image.fromarray(scene(120, 80, 10)), quality=90)
    imgs["gray_40x40.jpg"] = jpeg_bytes(Image.fromarray(scene(40, 40, 11)[..., 0], "L"), quality=90)
    cmyk = np.concatenate([scene(40, 32, 12), scene(40, 32, 13)[..., :1] // 3], -1)
    imgs["cmyk_40x32.jpg"] = jpeg_bytes(Image.fromarray(cmyk, "CMYK"), quality=92)
    imgs["progressive_70x50.jpg"] = jpeg_bytes(Image.fromarray(scene(70, 50, 14)), quality=85, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display; PIL and the processor ignore it
    imgs["exif6_56x30.jpg"] = jpeg_bytes(Image.fromarray(scene(56, 30, 15)), quality=90, exif=exif.tobytes())
    imgs["screen_360x800.png"] = png_bytes(Image.fromarray(screen(360, 800, 16)))
    return imgs


def _png16_rgb(arr):
    # Pillow cannot write 16-bit RGB; write the PNG by hand from zlib + the chunk layout.
    import struct, zlib
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _interlaced(arr):
    # Adam7 through Pillow is not available for writing; build it from the pass layout.
    import struct, zlib
    h, w, _ = arr.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw += b"".join(b"\x00" + sub[i].tobytes() for i in range(sub.shape[0]))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# (case name, image, backend, size override or None)
CASES = [
    ("rgb_64x48", "rgb_64x48.png", "torchvision", None),
    ("phone_45x100", "phone_45x100.png", "torchvision", None),
    ("wide_150x41", "wide_150x41.png", "torchvision", None),
    ("gray_50x70", "gray_50x70.png", "torchvision", None),
    ("rgba_60x60", "rgba_60x60.png", "torchvision", None),
    ("palette_40x56", "palette_40x56.png", "torchvision", None),
    ("palette_trns_40x56", "palette_trns_40x56.png", "torchvision", None),
    ("rgb16_33x47", "rgb16_33x47.png", "torchvision", None),
    ("gray16_30x30", "gray16_30x30.png", "torchvision", None),
    ("gray_alpha_36x36", "gray_alpha_36x36.png", "torchvision", None),
    ("interlaced_rgb_52x31", "interlaced_rgb_52x31.png", "torchvision", None),
    ("photo_120x80", "photo_120x80.jpg", "torchvision", None),
    ("gray_40x40_jpg", "gray_40x40.jpg", "torchvision", None),
    ("cmyk_40x32", "cmyk_40x32.jpg", "torchvision", None),
    ("progressive_70x50", "progressive_70x50.jpg", "torchvision", None),
    ("exif6_56x30", "exif6_56x30.jpg", "torchvision", None),
    # max_pixels override: a 360x800 screen shrunk to a few hundred patches' worth
    ("screen_360x800_max40k", "screen_360x800.png", "torchvision", {"shortest_edge": 12544, "longest_edge": 40000}),
    ("screen_360x800_max40k_pil", "screen_360x800.png", "pil", {"shortest_edge": 12544, "longest_edge": 40000}),
    ("phone_45x100_pil", "phone_45x100.png", "pil", None),
    ("rgba_60x60_pil", "rgba_60x60.png", "pil", None),
]

# Grid sizes only (no image needed): smart_resize through the processor's own helper.
GRID_ONLY = [
    (2400, 1080, 5000000), (2400, 1080, None), (1080, 2400, 5000000), (1, 1, None), (200, 1, None),
    (28, 5600, None), (2340, 1080, 5000000), (3200, 1440, 5000000), (27, 27, None), (1000, 1000, 12544 * 2),
]
GRID_ERRORS = [(1, 300), (201, 1), (700, 3)]  # aspect ratio above 200 after the small-image upscale


def value_table(proc, backend):
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :], 3, 0)[:, None, :]  # (3, 1, 256)
    if backend == "torchvision":
        t = proc.rescale_and_normalize(torch.from_numpy(ramp.copy())[None], True, proc.rescale_factor, True,
                                       proc.image_mean, proc.image_std)
        return t[0, :, 0, :].numpy().astype(np.float32)
    x = proc.rescale(ramp, proc.rescale_factor)
    x = proc.normalize(x, proc.image_mean, proc.image_std)
    return np.asarray(x, dtype=np.float32)[:, 0, :]


def main():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "codes"), exist_ok=True)
    imgs = make_images()
    for name, data in imgs.items():
        with open(os.path.join(OUT, "images", name), "wb") as f:
            f.write(data)
    procs = {"torchvision": Glm4vImageProcessor(), "pil": Glm4vImageProcessorPil()}
    tables = {b: value_table(p, b) for b, p in procs.items()}
    expected = {"transformers": __import__("transformers").__version__, "torch": torch.__version__,
                "pillow": Image.__version__, "tables": {b: t.tolist() for b, t in tables.items()},
                "decoded": {}, "cases": [], "grids": [], "grid_errors": []}
    for name, data in imgs.items():
        im = Image.open(io.BytesIO(data))
        rgb = convert_to_rgb(im, return_numpy=True)
        expected["decoded"][name] = {"width": im.size[0], "height": im.size[1], "mode": im.mode,
                                     "fnv1a64": fnv1a64(np.ascontiguousarray(rgb).tobytes())}
    for case, image, backend, size in CASES:
        proc = procs[backend]
        kwargs = {"size": size} if size else {}
        out = proc(images=Image.open(io.BytesIO(imgs[image])), return_tensors="np", **kwargs)
        pv = np.asarray(out["pixel_values"], dtype=np.float32)
        grid = out["image_grid_thw"].tolist()[0]
        table = tables[backend]
        p, t = proc.patch_size, proc.temporal_patch_size
        chan = (np.arange(pv.shape[1]) // (t * p * p))[None, :].repeat(pv.shape[0], 0)
        codes = np.zeros(pv.shape, np.uint8)
        for c in range(3):
            m = chan == c
            idx = np.searchsorted(table[c], pv[m])
            idx = np.clip(idx, 0, 255)
            assert np.array_equal(table[c][idx], pv[m]), f"{case}: a value not in the channel {c} table"
            codes[m] = idx
        code_file = f"codes/{case}.u8.z"
        with open(os.path.join(OUT, code_file), "wb") as f:
            f.write(zlib.compress(codes.tobytes(), 9))
        expected["cases"].append({"name": case, "image": image, "backend": backend,
                                  "max_pixels": size["longest_edge"] if size else None,
                                  "image_grid_thw": grid, "pixel_values_shape": list(pv.shape), "codes": code_file})
    proc = procs["torchvision"]
    for h, w, maxp in GRID_ONLY:
        size = {"shortest_edge": proc.size.shortest_edge, "longest_edge": maxp or proc.size.longest_edge}
        n = proc.get_number_of_image_patches(h, w, {"size": size})
        from transformers.models.glm4v.image_processing_glm4v import smart_resize
        rh, rw = smart_resize(2, h, w, 2, 28, size["shortest_edge"], size["longest_edge"])
        expected["grids"].append({"height": h, "width": w, "max_pixels": maxp, "resized": [rh, rw],
                                  "grid": [1, rh // 14, rw // 14], "patches": n, "image_tokens": n // 4})
    for h, w in GRID_ERRORS:
        try:
            proc(images=Image.new("RGB", (w, h)), return_tensors="np")
            raise AssertionError(f"{h}x{w} accepted")
        except ValueError as e:
            expected["grid_errors"].append({"height": h, "width": w, "error": str(e)})
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {OUT}: {len(imgs)} images, {len(CASES)} cases, {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
