"""A stand-in MicroPython board for mpremote, run by the MicroPython unix port.

    micropython host_tests/rawrepl_device.py ROOT   (stdin/stdout: the "serial port")

It speaks the raw REPL that mpremote uses (MicroPython docs, "mpremote" and "The
MicroPython REPL: raw mode"): Ctrl-A enters raw mode and answers
``raw REPL; CTRL-B to exit\\r\\n>``; Ctrl-D on an empty buffer soft-resets
(``soft reboot\\r\\n`` and the banner again); the raw-paste request ``\\x05A\\x01`` is
declined with ``R\\x00``; Ctrl-D after code answers ``OK``, runs the code, then writes
its output, ``\\x04``, the traceback if any, ``\\x04`` and the ``>`` prompt. Ctrl-B
leaves raw mode; Ctrl-C drops the buffer.

The board's filesystem is the directory ROOT, mounted at ``/`` with ``vfs.VfsPosix``, and
``sys.path`` is an ESP32's (``""``, ``".frozen"``, ``"/lib"``), so ``mpremote cp`` and
``mpremote mip install`` land where they would on a board. host_tests/test_install.py
connects mpremote to it through a pty.
"""

import os
import sys
import vfs

_BANNER = b"raw REPL; CTRL-B to exit\r\n>"

vfs.umount("/")
vfs.mount(vfs.VfsPosix(sys.argv[1]), "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]

_in = sys.stdin.buffer
_out = sys.stdout.buffer


def _w(b):
    _out.write(b)


def _fresh():
    return {"__name__": "__main__"}


def main():
    g = _fresh()
    raw = False
    buf = bytearray()
    while True:
        try:
            c = _in.read(1)
        except OSError:
            return  # the other end of the pty went away
        if not c:
            return
        b = c[0]
        if not raw:
            if b == 1:  # Ctrl-A
                raw = True
                buf = bytearray()
                _w(_BANNER)
            elif b == 4:  # Ctrl-D at the friendly prompt: soft reset
                g = _fresh()
                _w(b"MPY: soft reboot\r\n>>> ")
            continue
        if b == 1:
            buf = bytearray()
            _w(_BANNER)
        elif b == 2:  # Ctrl-B
            raw = False
            _w(b"\r\nMicroPython (rawrepl_device) on unix\r\n>>> ")
        elif b == 3:  # Ctrl-C
            buf = bytearray()
        elif b == 5:  # raw-paste request: \x05 A \x01
            _in.read(2)
            _w(b"R\x00")
        elif b == 4:
            if not buf:
                g = _fresh()
                _w(b"soft reboot\r\n")
                _w(_BANNER)
                continue
            code = bytes(buf)
            buf = bytearray()
            _w(b"OK")
            err = None
            try:
                exec(code, g)
            except Exception as e:  # reported to mpremote, as a board does
                err = e
            _w(b"\x04")
            if err is not None:
                sys.print_exception(err, sys.stdout)
            _w(b"\x04>")
        else:
            buf.append(b)


main()
