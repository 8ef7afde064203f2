# Freeze rmota into a MicroPython firmware build.
#
# A manifest is Python run by MicroPython's build (tools/manifestfile.py; MicroPython docs,
# "MicroPython manifest files"): metadata() first, then package()/module(); relative paths
# are resolved from this file's directory. This one describes the rmota package only, so a
# firmware manifest includes it after the port's own manifest, e.g. for an ESP32-S3:
#
#     # my_manifest.py
#     include("$(PORT_DIR)/boards/manifest.py")
#     include("/path/to/rmota/firmware/manifest.py", board="esp32")
#
#     cd micropython/ports/esp32
#     make BOARD=ESP32_GENERIC_S3 FROZEN_MANIFEST=/path/to/my_manifest.py
#
# Options (keyword arguments of include()):
#   board="esp32"  also freeze boards/esp32/board.py as the module ``board``
#   opt=N          mpy-cross optimisation level (default 3: asserts and docstrings gone;
#                  rmota never asserts on wire data, STYLE.md)
# firmware/main.py is not frozen: MicroPython runs main.py from the filesystem only, so
# copy it to the board (docs/real-board.md).
#
# The version below must equal lib/rmota/__init__.py's __version__ and package.json's
# "version" (host_tests/test_packaging.py checks it).

metadata(
    description="Host-MCU OTA agent for ESP RainMaker over ESP-AT",
    version="0.1.0",
)

options.defaults(board=None, opt=3)

package("rmota", base_path="../lib", opt=options.opt)

if options.board:
    module("board.py", base_path="../boards/" + options.board, opt=options.opt)
