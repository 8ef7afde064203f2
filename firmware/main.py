"""On-board entry point: power-on → boot logic → host OTA agent → (reboot).

On a board, copy ``lib/rmota`` and your board profile (as ``board.py``) to the device
and run this file as ``main.py``. On the desktop (``boards/unix``) run it under the
MicroPython unix port::

    MICROPYPATH=lib:boards/unix RMOTA_FLASH=flash.bin RMOTA_UART=/dev/pts/5 \
        micropython firmware/main.py

``board.open()`` powers the board on (the unix board runs its boot logic there). The
agent then confirms a freshly committed image, delivers any pending result, fetches a
job with ``AT+RMOTAFETCH`` and works it. Exit codes on the unix port: 0 done,
75 reboot (the runner starts the process again), 1 defect.
"""

import gc
import sys

import board as board_profile
from rmota.agent import for_board

# Compiling the package's source (when it is not frozen or .mpy) leaves garbage all over
# the heap: collected now, the agent's buffers and the writer's ring find room in one
# piece (a 512k heap failed at 921600 baud in some checkouts without it).
gc.collect()

MAX_ERRORS = 20  # agent errors in one run before giving up (about 10 s of retries)


class _Progress:
    """Prints the download progress every 10 %."""

    def __init__(self):
        self.shown = -1

    def __call__(self, done, total):
        pct = done * 100 // total if total else 100
        if pct // 10 != self.shown:
            self.shown = pct // 10
            print("[main] progress %d%% (%d of %d B)" % (pct, done, total))


def main():
    try:
        b = board_profile.open()
        bs = b.boot_state()
        print(
            "[main] booted slot %d version %d%s"
            % (bs["slot"], b.running_version(), " (trial)" if bs["trial"] else "")
        )
        agent = for_board(b, progress=_Progress())
    except Exception as e:
        # (a UART the profile cannot open, settings the agent refuses): said, and the
        # application after this file still runs; no OTA until it is fixed.
        print("[main] rmota cannot start:", repr(e))
        return 1
    # An error that comes back every time (too little heap, a broken board) ends the
    # run with exit code 1 instead of retrying forever; a real device would reset.
    state = agent.run(until_idle=True, max_errors=MAX_ERRORS)
    if agent.result:
        print("[main] result status %d: %s" % agent.result)
    print("[main] agent %s; errors %d" % (state, agent.errors))
    return 1 if agent.errors and agent.last_error else 0


if __name__ == "__main__":
    sys.exit(main())
