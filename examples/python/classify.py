"""Runs a ConvNeXt V2 model compiled ahead of time by cnx from Python, through ctypes.

Link the object and the runtime library into one shared library, then load it here:

    cnx compile tiny-1k-224 --emit obj --output tiny.o --symbol-prefix tiny
    cc -shared -o libtiny.so tiny.o -Ltarget/release -l:libconvnextv2.a -lpthread -ldl -lm
    cnx preprocess --model tiny-1k-224 photo.jpg --output pixels.npy
    python3 examples/python/classify.py ./libtiny.so tiny model.safetensors pixels.npy

usage: classify.py LIBRARY PREFIX WEIGHTS PIXELS.npy [--logits OUT.f32]

Only the standard library: the pixel values are read from the .npy file (float32, C order)
with `array`, the sizes asked of the library (its labels) and of the file's header.
"""

import array
import ast
import ctypes
import math
import sys


def read_npy(path):
    """(shape, float32 array) of a version-1 little-endian float32 C-order .npy file."""
    with open(path, "rb") as f:
        magic = f.read(10)
        if magic[:6] != b"\x93NUMPY" or magic[6] != 1:
            sys.exit(f"classify.py: {path}: not a version 1 .npy file")
        header = ast.literal_eval(f.read(int.from_bytes(magic[8:10], "little")).decode("latin1"))
        if header["descr"] != "<f4" or header["fortran_order"]:
            sys.exit(f"classify.py: {path}: expected little-endian float32 in C order")
        values = array.array("f")
        values.frombytes(f.read())
    if sys.byteorder != "little":
        values.byteswap()
    return header["shape"], values


def main(argv):
    if len(argv) not in (5, 7):
        sys.exit(__doc__)
    library, prefix, weights, pixels_path = argv[1:5]
    logits_path = argv[6] if len(argv) == 7 and argv[5] == "--logits" else None
    lib = ctypes.CDLL(library)

    def fn(name, restype, *argtypes):
        f = getattr(lib, f"{prefix}_{name}")
        f.restype, f.argtypes = restype, list(argtypes)
        return f

    floats = ctypes.POINTER(ctypes.c_float)
    load = fn("load", ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))
    run = fn("run", ctypes.c_int, ctypes.c_void_p, floats, ctypes.c_size_t, floats,
             ctypes.c_size_t, floats, ctypes.c_size_t)
    label = fn("label", ctypes.c_char_p, ctypes.c_size_t)
    free = fn("free", None, ctypes.c_void_p)
    last_error = lib.cnx_last_error
    last_error.restype = ctypes.c_char_p

    def check(code, what):
        if code != 0:
            sys.exit(f"classify.py: {what} failed (code {code}): {last_error().decode()}")

    model = ctypes.c_void_p()
    check(load(weights.encode(), ctypes.byref(model)), "load")
    shape, pixels = read_npy(pixels_path)
    batch = shape[0] if len(shape) == 4 else 1
    labels = 0
    while label(labels) is not None:
        labels += 1
    pixel_buf = (ctypes.c_float * len(pixels)).from_buffer(pixels)
    logits = (ctypes.c_float * (batch * labels))()
    check(run(model, pixel_buf, len(pixels), logits, len(logits), None, 0), "run")
    free(model)

    for b in range(batch):
        row = logits[b * labels:(b + 1) * labels]
        top = max(row)
        total = sum(math.exp(v - top) for v in row)
        print(f"image {b}:")
        for k in sorted(range(labels), key=lambda k: -row[k])[:5]:
            print(f"  {100 * math.exp(row[k] - top) / total:5.2f}%  {label(k).decode()}")
    if logits_path:
        with open(logits_path, "wb") as f:
            f.write(bytes(logits))


if __name__ == "__main__":
    main(sys.argv)
