#!/usr/bin/env python3
"""numpy's verdict on every .npy file in a directory: the reference of tests/tests/fuzz.rs.

Usage: fuzz_npy_reference.py DIR

Prints one tab-separated line per *.npy file, sorted by name:

    NAME  error  EXCEPTION
    NAME  ok     DTYPE  SHAPE  SHA256  DATA_OFFSET  FILE_SIZE  DESCR

where DTYPE is numpy's dtype.str ('<f4', '|u1', '>f4', …), SHAPE the comma-separated shape,
SHA256 the hash of the C-order bytes (in the dtype's byte order), DATA_OFFSET the offset of the
first data byte, FILE_SIZE the file's size, and DESCR the repr of the header's 'descr' value as
written (numpy accepts aliases such as 'float32' or 'f4').
"""

import ast
import hashlib
import os
import struct
import sys
import warnings

import numpy as np

try:  # numpy >= 2.0 keeps the implementation here
    from numpy.lib._format_impl import _filter_header
except ImportError:  # numpy 1.x
    from numpy.lib.format import _filter_header


def header(path):
    """The header's descr (repr) and the data offset, parsed as numpy does."""
    with open(path, "rb") as f:
        b = f.read()
    major = b[6]
    if major == 1:
        (n,) = struct.unpack("<H", b[8:10])
        start = 10
    else:
        (n,) = struct.unpack("<I", b[8:12])
        start = 12
    text = b[start : start + n].decode("utf8" if major == 3 else "latin1")
    try:
        d = ast.literal_eval(text)
    except SyntaxError:
        d = ast.literal_eval(_filter_header(text))
    return repr(d["descr"]), start + n


def main(directory):
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".npy"):
            continue
        path = os.path.join(directory, name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = np.load(path, allow_pickle=False)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"np.load returned {type(a).__name__}")
        except Exception as e:  # noqa: BLE001 - every failure is a verdict
            print(f"{name}\terror\t{type(e).__name__}")
            continue
        # numpy loaded it, so its header parses; a failure here is a bug of this script.
        descr, offset = header(path)
        c = np.ascontiguousarray(a)
        print(
            name,
            "ok",
            a.dtype.str,
            ",".join(str(s) for s in a.shape),
            hashlib.sha256(c.tobytes()).hexdigest(),
            offset,
            os.path.getsize(path),
            descr,
            sep="\t",
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
