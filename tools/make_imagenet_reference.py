#!/usr/bin/env python3
"""Write the ImageNet preprocessing parity data: a tiny PNG and torch's preprocessed values.

Outputs (committed; CI never runs torch):
  tests/data/fixtures/imagenet_41x29.png          a 41 x 29 (width x height) 8-bit RGB PNG
  tests/data/imagenet_preprocess_reference.txt     torch's values for three (resize, crop) cases

The reference is torchvision's ImageClassification transform on a float image, written with torch
only (torchvision is not installed): x = pixels / 255 as float32 (1, 3, H, W), then
F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True) with torchvision's
Resize(int) output size (shorter side = resize, longer = int(resize * long / short)), CenterCrop
(offsets int(round((size - crop) / 2.0))) and Normalize((x - mean) / std). A plain-Python double
transcription of the antialiased filter is computed too; the two must agree to 1e-5.

It also reports how far torchvision's uint8 path (F.resize on a uint8 tensor rounds the resized
image to uint8 before the float conversion) lies from the float path, for docs/DATA.md.

Run with Debian's python3 (python3-torch): /usr/bin/python3 tools/make_imagenet_reference.py
File format: '#' comments; "case RESIZE CROP COUNT" followed by COUNT lines "C Y X VALUE".
"""

import argparse
import math
import struct
import sys
import zlib
from pathlib import Path

WIDTH, HEIGHT = 41, 29
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (resize, crop, samples): None = every value. 256/224 is the real one (upsampling here, with a
# left offset of round(68.5) = 68, a half-to-even case); the small ones downsample, where the
# antialiasing filter matters, and 12/9 has two half-to-even offsets (round(1.5) = 2, round(3.5) = 4).
CASES = [(256, 224, 64), (12, 9, None), (5, 5, None)]


def lcg(seed):
    state = seed
    while True:
        state = (1664525 * state + 1013904223) % 2**32
        yield state >> 8


def make_pixels():
    """HEIGHT x WIDTH x 3 ints: smooth gradients, a hard diagonal edge and some noise."""
    gen = lcg(14)
    pixels = []
    for y in range(HEIGHT):
        row = []
        for x in range(WIDTH):
            noise = next(gen) % 24
            r = (x * 255) // (WIDTH - 1)
            g = (y * 255) // (HEIGHT - 1)
            b = 230 if x + 2 * y > 40 else 20
            row.append([min(255, r + noise) if x % 7 else 255, max(0, g - noise), b ^ (noise & 7)])
        pixels.append(row)
    pixels[0][0] = [255, 255, 255]
    pixels[-1][-1] = [0, 0, 0]
    return pixels


def png_bytes(pixels):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)
    ihdr = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def resized_size(h, w, shorter):
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(shorter * long / short)
    return (new_long, shorter) if w <= h else (shorter, new_long)


def crop_offsets(h, w, crop):
    return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def taps(n_in, n_out):
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    result = []
    for o in range(n_out):
        center = scale * (o + 0.5)
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), n_in)
        weights = [max(0.0, 1.0 - abs((j - center + 0.5) * inverse)) for j in range(first, last)]
        total = sum(weights)
        result.append((first, [w / total for w in weights] if total else weights))
    return result


def preprocess_plain(pixels, resize, crop):
    h, w = resized_size(HEIGHT, WIDTH, resize)
    top, left = crop_offsets(h, w, crop)
    rows, cols = taps(HEIGHT, h), taps(WIDTH, w)
    out = []
    for c in range(3):
        plane = []
        for y in range(top, top + crop):
            fy, wy = rows[y]
            line = []
            for x in range(left, left + crop):
                fx, wx = cols[x]
                v = sum(wy[i] * sum(wx[k] * pixels[fy + i][fx + k][c] / 255.0 for k in range(len(wx)))
                        for i in range(len(wy)))
                line.append((v - MEAN[c]) / STD[c])
            plane.append(line)
        out.append(plane)
    return out


def preprocess_torch(torch, pixels, resize, crop, uint8_path=False):
    F = torch.nn.functional
    x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    h, w = resized_size(HEIGHT, WIDTH, resize)
    if uint8_path:  # torchvision's F.resize on a uint8 tensor: interpolate in float, round to uint8
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = torch.round(x).clamp(0, 255) / 255.0
    else:
        x = F.interpolate(x / 255.0, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    top, left = crop_offsets(h, w, crop)
    x = x[0, :, top:top + crop, left:left + crop]
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).tolist()


def main():
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--png", type=Path, default=root / "tests" / "data" / "fixtures" / "imagenet_41x29.png")
    parser.add_argument("--out", type=Path, default=root / "tests" / "data" / "imagenet_preprocess_reference.txt")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)

    pixels = make_pixels()
    gen = lcg(3)
    lines = ["# torchvision's ImageNet eval preprocessing of tests/data/fixtures/imagenet_41x29.png;",
             "# generated by tools/make_imagenet_reference.py with torch " + torch.__version__ + ":",
             "# F.interpolate(pixels / 255 float32, bilinear, align_corners=False, antialias=True),",
             "# CenterCrop, Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).",
             "# format: 'case RESIZE CROP COUNT' then COUNT lines 'C Y X VALUE'"]
    worst_plain, worst_uint8 = 0.0, 0.0
    for resize, crop, samples in CASES:
        ref = preprocess_torch(torch, pixels, resize, crop)
        plain = preprocess_plain(pixels, resize, crop)
        rounded = preprocess_torch(torch, pixels, resize, crop, uint8_path=True)
        positions = [(c, y, x) for c in range(3) for y in range(crop) for x in range(crop)]
        for c, y, x in positions:
            worst_plain = max(worst_plain, abs(ref[c][y][x] - plain[c][y][x]))
            worst_uint8 = max(worst_uint8, abs(ref[c][y][x] - rounded[c][y][x]))
        if samples is not None:
            chosen = [(0, 0, 0), (2, crop - 1, crop - 1), (1, crop // 2, crop // 2), (0, 0, crop - 1), (2, crop - 1, 0)]
            while len(chosen) < samples:
                p = (next(gen) % 3, next(gen) % crop, next(gen) % crop)
                if p not in chosen:
                    chosen.append(p)
            positions = chosen
        lines.append(f"case {resize} {crop} {len(positions)}")
        lines += [f"{c} {y} {x} {ref[c][y][x]:.8g}" for c, y, x in positions]
    if worst_plain > 1e-5:
        sys.exit(f"make_imagenet_reference: torch and the plain-Python filter disagree by {worst_plain}")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.write_bytes(png_bytes(pixels))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.png} ({args.png.stat().st_size} B) and {args.out} ({args.out.stat().st_size} B)")
    print(f"torch vs plain-Python double filter: max |diff| {worst_plain:.2e}")
    print(f"torchvision uint8 path (rounded after resize) vs float path: max |diff| {worst_uint8:.4f} "
          f"(after normalisation; 0.5 / 255 / 0.224 = {0.5 / 255 / 0.224:.4f})")


if __name__ == "__main__":
    main()
