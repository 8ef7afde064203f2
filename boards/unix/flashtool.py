"""Inspect and prepare the desktop board's flash file (CPython or the MicroPython unix port).

See ``USAGE`` below (printed for bad arguments)."""

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
for _p in (_here, _here + "/../../lib"):
    if _p not in sys.path:
        sys.path.append(_p)

import hashlib  # noqa: E402  (after the sys.path set-up)

from board import FLASH_SIZE, SLOT_SECTOR, SLOT_SIZE, Board, provision  # noqa: E402
from bootrec import STATE_NAMES, Bricked  # noqa: E402
from rmota.errors import ImageError  # noqa: E402


USAGE = """
    flashtool.py provision FLASH IMAGE [VERSION]   factory image into slot 0, confirmed
    flashtool.py status FLASH                      boot record, slot digests, journal
    flashtool.py boot FLASH                        run the boot logic, print the slot
    flashtool.py forget FLASH                      clear the agent's journal (its job)

``IMAGE`` is either an rmota image (header + payload: the payload goes to the slot and
the version comes from the header unless ``VERSION`` is given) or a raw binary (then
``VERSION`` is required). ``boot`` changes the record as a power-on would (trial →
trial_booted, rollback). ``forget`` makes the agent forget the job it was working on
(its journal record and block CRCs; the slots and the boot record stay): run it only
while the agent is stopped. Exit codes: 0 ok, 1 error (a file that cannot be read or
written, a bad VERSION or image), 2 usage, 3 bricked.
"""


def _hex(b):
    return "".join("%02x" % x for x in b)


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def _version(text):
    # VERSION on the command line: decimal digits only, 0..2**32-1 (the header's field).
    if not text or not all("0" <= c <= "9" for c in text) or int(text) > 0xFFFFFFFF:
        raise ValueError("VERSION must be a whole number 0..4294967295, not %r" % text)
    return int(text)


def cmd_provision(flash, image_path, version=None):
    if version is not None:
        version = _version(version)  # (before anything is read or written)
    data = _read_file(image_path)
    if data[:4] == b"RMOT":
        from rmota.image import ImageHeader

        hdr = ImageHeader.parse(data)
        payload = data[hdr.header_len : hdr.header_len + hdr.image_len]
        if hashlib.sha256(payload).digest() != hdr.sha256:
            print("image payload does not match its header's SHA-256")
            return 3
        if version is None:
            version = hdr.image_version
        data = payload
    elif version is None:
        print("a raw image needs a VERSION")
        return 2
    provision(flash, data, version)
    print(
        "provisioned %s: slot 0, %d bytes, version %d, sha256 %s"
        % (flash, len(data), version, _hex(hashlib.sha256(data).digest()))
    )
    return 0


def cmd_status(flash):
    b = Board(flash, boot=False)  # (Bricked: main() says so)
    rec = b.loader.record
    if rec is None:
        b.close()
        print("bricked: no valid boot record")
        return 3
    print("flash %s (%d bytes), record seq %d" % (flash, FLASH_SIZE, rec.seq))
    print(
        "active slot %d, state %s, rolled_back %s"
        % (rec.active, STATE_NAMES[rec.state], rec.rolled_back)
    )
    for i in (0, 1):
        ok = b.loader.verify(i, rec)
        print(
            "slot %d @ sector %d (%d bytes): length %d, version %d, sha256 %s, %s"
            % (
                i,
                SLOT_SECTOR[i],
                SLOT_SIZE,
                rec.lengths[i],
                rec.versions[i],
                _hex(rec.digests[i]),
                "verified" if ok else "empty" if not rec.lengths[i] else "BAD",
            )
        )
    print("journal: %s, %d block CRCs" % (b.journal.load(), len(b.journal.crcs())))
    b.close()
    return 0


def cmd_forget(flash):
    b = Board(flash, boot=False)  # (Bricked: main() says so)
    print("journal was: %s" % (b.journal.load(),))
    b.journal.clear()
    b.close()
    return 0


def cmd_boot(flash):
    b = Board(flash)
    st = b.boot_state()
    print(
        "booted slot %d version %d trial %s rolled_back %s%s"
        % (
            st["slot"],
            b.running_version(),
            st["trial"],
            st["rolled_back"],
            (" (fell back: %s)" % b.loader.fell_back) if b.loader.fell_back else "",
        )
    )
    b.close()
    return 0


def main(argv):
    """Run the command in ``argv`` (a list of str). Returns the exit code: 0, 1 (a file
    that cannot be read or written, an image that cannot be taken; one line on stdout),
    2 (usage), 3 (bricked or the image's digest is wrong)."""
    cmds = {"status": cmd_status, "boot": cmd_boot, "forget": cmd_forget}
    if any(a[:1] == "-" and not "0" <= a[1:2] <= "9" for a in argv):  # (--help, ...)
        print(USAGE)
        return 0 if "-h" in argv or "--help" in argv else 2
    try:
        if 3 <= len(argv) <= 4 and argv[0] == "provision":
            return cmd_provision(argv[1], argv[2], argv[3] if len(argv) > 3 else None)
        if len(argv) == 2 and argv[0] in cmds:
            return cmds[argv[0]](argv[1])
    except Bricked as e:
        print("bricked:", e.reason)
        return 3
    except (OSError, ValueError, ImageError) as e:
        print("flashtool: error: %s (%s)" % (e, " ".join(argv[1:])))
        return 1
    print(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
