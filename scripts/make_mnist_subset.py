"""Writes tests/data/mnist: the first N_TRAIN training and N_TEST test images of the
standard MNIST IDX files (gzipped, the same format), for tests on real digits.

    python scripts/make_mnist_subset.py /path/to/mnist [tests/data/mnist]
"""
import gzip
import hashlib
import struct
import sys
from pathlib import Path

N_TRAIN, N_TEST = 2000, 1000
FILES = {
    "train-images-idx3-ubyte.gz": N_TRAIN,
    "train-labels-idx1-ubyte.gz": N_TRAIN,
    "t10k-images-idx3-ubyte.gz": N_TEST,
    "t10k-labels-idx1-ubyte.gz": N_TEST,
}


def subset(raw: bytes, count: int) -> bytes:
    """The IDX header with its first dimension set to count, then the first count items."""
    ndim = raw[3]
    dims = list(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]))
    item = 1
    for d in dims[1:]:
        item *= d
    if dims[0] < count:
        raise SystemExit(f"the file holds {dims[0]} items, fewer than {count}")
    header = raw[:4] + struct.pack(f">{ndim}I", count, *dims[1:])
    body_start = 4 + 4 * ndim
    return header + raw[body_start:body_start + count * item]


def main(source: str, target: str = "tests/data/mnist") -> None:
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    for name, count in FILES.items():
        packed = (Path(source) / name).read_bytes()
        print(f"{name}: source md5 {hashlib.md5(packed).hexdigest()}")
        data = subset(gzip.decompress(packed), count)
        # mtime=0: the same bytes every time the subset is made.
        (out / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


if __name__ == "__main__":
    main(*sys.argv[1:])
