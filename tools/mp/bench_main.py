"""firmware/main.py for the benchmark: the same power-on → agent run, plus the heap
figures of issue 5 printed at the end of each boot (``[bench] ...`` lines, read by
tools/bench.py). Runs under the MicroPython unix port with the environment of
tools/scenario.py (``RMOTA_FLASH``, ``RMOTA_UART``, ``RMOTA_SETTINGS``).

- ``peak_alloc``: the highest ``gc.mem_alloc()`` seen while the image was written (the
  progress callback samples it after every record), garbage included - with
  ``RMOTA_BENCH_GC_THRESHOLD=<bytes>`` the collector runs that often, so it is close to
  the live peak;
- ``live_after``: ``gc.mem_alloc()`` after a collection at the end of the boot;
- ``heap``: ``gc.mem_alloc() + gc.mem_free()``;
- ``code``: heap taken by importing the board profile and the package (on a board whose
  modules are frozen into flash this stays out of the heap); ``setup``: what powering the
  board on and building the link and agent took beyond it;
- ``overruns``: bytes the faithful UART lost; ``attempts``: failed download attempts;
  ``windows``: download windows written (window mode).
"""

import gc
import os
import sys

gc.collect()
_A0 = gc.mem_alloc()
import board as board_profile  # noqa: E402
from rmota.agent import for_board  # noqa: E402

gc.collect()
_CODE = gc.mem_alloc() - _A0  # the modules: bytecode, qstrs, function objects
_T = os.getenv("RMOTA_BENCH_GC_THRESHOLD")
if _T:
    gc.threshold(int(_T))  # collect often: the peak then shows the live heap, not garbage


class _Peak:
    def __init__(self):
        self.peak = 0
        self.calls = 0
        self.setup = 0

    def __call__(self, done, total):
        a = gc.mem_alloc()
        if a > self.peak:
            self.peak = a
        self.calls += 1


def _report(peak, code, agent, b):
    gc.collect()
    print(
        "[bench] peak_alloc %d live_after %d heap %d records %d exit %d overruns %d"
        " attempts %d windows %d peak_held %d code %d setup %d"
        % (
            peak.peak,
            gc.mem_alloc(),
            gc.mem_alloc() + gc.mem_free(),
            peak.calls,
            code,
            getattr(b.uart, "overruns", -1),
            agent.attempts,
            agent.windows,
            getattr(b.uart, "peak_held", -1),
            _CODE,
            peak.setup,
        )
    )


def main():
    peak = _Peak()
    b = board_profile.open()
    agent = for_board(b, progress=peak)
    gc.collect()
    peak.setup = gc.mem_alloc() - _A0 - _CODE  # board, link and agent objects, buffers
    try:
        state = agent.run(until_idle=True)
    except SystemExit as e:
        _report(peak, e.args[0] if e.args else 0, agent, b)
        raise
    if agent.result:
        print("[main] result status %d: %s" % agent.result)
    print("[main] agent %s; errors %d" % (state, agent.errors))
    code = 1 if agent.errors and agent.last_error else 0
    _report(peak, code, agent, b)
    return code


sys.exit(main())
