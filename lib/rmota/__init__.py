"""rmota: a host-MCU OTA agent for ESP RainMaker over ESP-AT.

The package runs unchanged on MicroPython and on CPython >= 3.11. Hardware comes in
through three small interfaces (a UART-like stream, a block device, a millisecond
clock); see ``rmota.agent.HostOTA`` for the entry point::

    from rmota.at import ATLink
    from rmota.agent import HostOTA
    link = ATLink(uart)
    agent = HostOTA(link, board)
    agent.run()
"""

__version__ = "0.1.0"
