#!/usr/bin/env python3
"""Turns MNIST in its IDX form (gzip) into the text files of the Batch AI CNTK quickstart:
`Train-28x28_cntk_text.txt` and `Test-28x28_cntk_text.txt`, one image per line in CNTK's text
format, `|labels <10 one-hot values> |features <784 pixel values 0-255>`.

    python3 examples/cntk-mnist/prepare_data.py ../shared/data/mnist OUT_DIR [--limit N]

`--limit N` keeps the first N images of each set (a quick run). Python 3 only, no numpy.
"""

import argparse
import gzip
import os
import struct
import sys

SETS = {
    "Train-28x28_cntk_text.txt": ("train-images.idx3-ubyte.gz", "train-labels.idx1-ubyte.gz"),
    "Test-28x28_cntk_text.txt": ("t10k-images.idx3-ubyte.gz", "t10k-labels.idx1-ubyte.gz"),
}


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, count = struct.unpack(">II", data[:8])
    if got != magic:
        sys.exit(f"{path}: not an IDX file of the expected kind (magic {got:#x}, wanted {magic:#x})")
    return count, data


def convert(src, images_name, labels_name, out_path, limit):
    count, images = read_idx(os.path.join(src, images_name), 0x803)
    labels_count, labels = read_idx(os.path.join(src, labels_name), 0x801)
    rows, cols = struct.unpack(">II", images[8:16])
    if labels_count != count or (rows, cols) != (28, 28):
        sys.exit(f"{images_name}/{labels_name}: {count} images of {rows}x{cols} but {labels_count} labels")
    n = count if limit is None else min(limit, count)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as out:
        for i in range(n):
            label = labels[8 + i]
            onehot = " ".join("1" if d == label else "0" for d in range(10))
            pixels = images[16 + i * 784:16 + (i + 1) * 784]
            out.write(f"|labels {onehot} |features {' '.join(map(str, pixels))}\n")
    os.replace(tmp, out_path)  # a reader never sees half a file
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="directory with the four MNIST .idx*-ubyte.gz files")
    parser.add_argument("out", help="directory for the CNTK text files")
    parser.add_argument("--limit", type=int, help="keep only the first N images of each set")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, (images, labels) in SETS.items():
        n = convert(args.source, images, labels, os.path.join(args.out, name), args.limit)
        print(f"{name}: {n} images")


if __name__ == "__main__":
    main()
