"""asyncio front end: the agent and AT commands as coroutines, thin shells over the same
pump (``HostOTA.poll()``, ``ATLink.poll()``).

Usage (MicroPython or CPython)::

    import asyncio
    from rmota import aio
    from rmota.agent import for_board

    agent = for_board(board)
    asyncio.create_task(aio.serve(agent))           # the agent runs in the background
    c = await aio.command(agent.link, b"AT+RMPARAM?")  # the application shares the link

A command sent while the agent waits for its own answer abandons the agent's command
(one command is in flight on an AT link); applications should send while
``agent.busy()`` is False.
"""

import asyncio

try:
    _sleep_ms = asyncio.sleep_ms  # MicroPython
except AttributeError:  # CPython

    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


async def serve(agent, idle_ms=5, until_idle=False):
    """Run ``agent.poll()`` forever (or, with ``until_idle``, until the agent has nothing
    left to do), yielding to other tasks after every poll and sleeping ``idle_ms`` (ms)
    when nothing arrived. Returns the agent's state when ``until_idle``."""
    while True:
        n = agent.poll()
        if until_idle and agent.idle:
            return agent.state
        await _sleep_ms(0 if n else idle_ms)


async def command(link, cmd, timeout_ms=2000, idle_ms=2):
    """Send ``cmd`` (bytes, no ``\\r\\n``) on ``link`` and wait for its final result
    without blocking other tasks. Returns the ``Command`` on OK; raises like
    ``Command.check()`` (``LinkTimeout``, ``ESPBusy``, ``ESPReset``, ``CommandError``).
    If another task polls the same link (``serve``), the answer is collected there."""
    c = link.send(cmd, timeout_ms)
    while not c.done:
        if not link.poll():
            await _sleep_ms(idle_ms)
    return c.check()
