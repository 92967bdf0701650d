"""Build the shipped Omniglot-mini file from the two small Omniglot background zips.

    python -m mclstudio.data.build_omniglot_mini SRC_DIR [-o OUT]

SRC_DIR holds images_background_small1.zip, images_background_small2.zip and LICENSE (Omniglot,
Lake, Salakhutdinov & Tenenbaum 2015, MIT). Inside a zip: ``<set>/<alphabet>/characterNN/<id>_<drawer>.png``,
105x105 mode "1" PNGs, black strokes on white.

Greek and Latin are in both zips with byte-identical files; they are kept once (a differing
duplicate is an error). Every image is turned into "ink" (stroke = 1.0, background = 0.0),
area-averaged (PIL BOX filter on a float image, i.e. antialiased) down to 32x32 and stored as
uint8 (255 = full stroke, 0 = background).

Written arrays (np.savez_compressed, no pickled objects):
    images        uint8 (C, 20, 32, 32)   C characters, drawers in drawer-number order
    alphabets     str   (A,)              alphabet folder names, sorted
    char_alphabet int64 (C,)              index into ``alphabets`` of each character
    char_names    str   (C,)              "<alphabet>/<characterNN>", sorted (alphabet, then folder)
The LICENSE is copied beside it as OMNIGLOT_LICENSE.txt with a header line.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
SIZE = 32
DRAWERS = 20
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "omniglot_mini.npz"
LICENSE_HEADER = (
    "This licence covers the Omniglot data in omniglot_mini.npz "
    "(Lake, Salakhutdinov & Tenenbaum, Science 2015; github.com/brendenlake/omniglot).\n\n"
)


def read_pngs(src_dir: Path) -> dict[str, bytes]:
    """Map "<alphabet>/<characterNN>/<file>.png" to the PNG bytes, over both zips, deduplicated."""
    files: dict[str, bytes] = {}
    for zip_name in ZIPS:
        with zipfile.ZipFile(src_dir / zip_name) as zf:
            for name in zf.namelist():
                if not name.endswith(".png"):
                    continue
                # Drop the top folder (the set name) so Greek/Latin of both zips share keys.
                key = name.split("/", 1)[1]
                data = zf.read(name)
                if key in files and files[key] != data:
                    raise SystemExit(f"{key} differs between the zips; refusing to deduplicate it")
                files[key] = data
    return files


def to_ink_32(png: bytes) -> np.ndarray:
    """105x105 black-on-white PNG -> (32, 32) uint8 ink, 255 = stroke, area-averaged."""
    img = Image.open(io.BytesIO(png)).convert("L")
    ink = 1.0 - np.asarray(img, dtype=np.float32) / 255.0
    small = Image.fromarray(ink, mode="F").resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.clip(np.rint(np.asarray(small) * 255.0), 0, 255).astype(np.uint8)


def build(src_dir: Path) -> dict[str, np.ndarray]:
    """Return the arrays described in the module docstring."""
    files = read_pngs(src_dir)
    by_char: dict[str, list[tuple[int, str]]] = {}
    for key in files:
        alphabet, character, fname = key.split("/")
        drawer = int(fname.rsplit("_", 1)[1].removesuffix(".png"))
        by_char.setdefault(f"{alphabet}/{character}", []).append((drawer, key))

    char_names = sorted(by_char, key=lambda n: tuple(n.split("/")))
    alphabets = sorted({n.split("/")[0] for n in char_names})
    images = np.zeros((len(char_names), DRAWERS, SIZE, SIZE), dtype=np.uint8)
    for c, name in enumerate(char_names):
        drawn = sorted(by_char[name])
        if [d for d, _ in drawn] != list(range(1, DRAWERS + 1)):
            raise SystemExit(f"{name} does not have drawers 1..{DRAWERS}")
        for i, (_, key) in enumerate(drawn):
            images[c, i] = to_ink_32(files[key])
    char_alphabet = np.array([alphabets.index(n.split("/")[0]) for n in char_names], dtype=np.int64)
    return {
        "images": images,
        "alphabets": np.array(alphabets),
        "char_alphabet": char_alphabet,
        "char_names": np.array(char_names),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", type=Path, help="folder with the two zips and LICENSE")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="output .npz")
    args = parser.parse_args(argv)

    arrays = build(args.src_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    license_text = (args.src_dir / "LICENSE").read_text()
    (args.out.parent / "OMNIGLOT_LICENSE.txt").write_text(LICENSE_HEADER + license_text)

    n_chars = len(arrays["char_names"])
    print(
        f"wrote {args.out}: {len(arrays['alphabets'])} alphabets, {n_chars} characters, "
        f"{n_chars * DRAWERS} images, {args.out.stat().st_size / 1e6:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
