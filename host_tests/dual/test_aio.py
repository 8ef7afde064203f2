"""The asyncio front end and the idle agent: a coroutine serves the agent while another
one uses the same link; an idle agent sends nothing until a URC wakes it."""

import asyncio
import unittest

from fakeuart import FakeUART
from rmota import aio
from rmota.agent import HostOTA
from rmota.at import ATLink
from rmota.compat import VirtualClock
from rmota.log import Logger


class _Journal:
    def __init__(self):
        self.d = None

    def load(self):
        return self.d

    def save(self, d):
        self.d = d

    def clear(self):
        self.d = None

    def crc_append(self, c):
        pass

    def crcs(self):
        return []

    def crc_reset(self):
        pass


class _Board:
    board_id = b"unix"
    settings = {"fetch_wait_ms": 30, "line_max": 256, "rx_size": 256, "uart_rxbuf": 256}

    def __init__(self):
        self.journal = _Journal()


class _ESP:
    """Answers OK to everything; AT+RMOTAFETCH finds no job."""

    def __init__(self, uart):
        self.uart = uart
        self.commands = []
        uart.on_write = self.on_write

    def on_write(self, data):
        for line in data.split(b"\r\n"):
            if line:
                self.commands.append(line)
                self.uart.feed(b"\r\nOK\r\n")


def _agent(clock=None):
    u = FakeUART()
    esp = _ESP(u)
    link = ATLink(u, clock=clock, line_max=256, record_max=256)
    logs = []
    agent = HostOTA(link, _Board(), log=Logger("t", sink=logs.append))
    return u, esp, link, agent


def _run(coro):
    return (
        asyncio.run(coro)
        if hasattr(asyncio, "run")
        else asyncio.get_event_loop().run_until_complete(coro)
    )


class TestAsync(unittest.TestCase):
    def test_serve_until_idle_then_command(self):
        u, esp, link, agent = _agent()

        async def main():
            state = await aio.serve(agent, until_idle=True)
            c = await aio.command(link, b"AT+RMPARAM")
            return state, c.final

        state, final = _run(main())
        self.assertEqual(state, "idle")
        self.assertEqual(final, b"OK")
        self.assertEqual(
            esp.commands[:5],
            [b"AT", b"ATE0", b"AT+SYSLOG=1", b"AT+HTTPCHEAD=0", b"AT+RMOTAFETCH"],
        )
        self.assertEqual(esp.commands[-1], b"AT+RMPARAM")

    def test_idle_agent_stays_quiet_until_a_urc(self):
        clk = VirtualClock()
        u, esp, link, agent = _agent(clk)
        agent.run(until_idle=True, timeout_ms=5000)
        n = len(esp.commands)
        for _ in range(120000):  # two virtual minutes
            agent.poll()
            clk.sleep_ms(1)
        self.assertEqual(len(esp.commands), n)  # nothing sent while idle
        self.assertTrue(agent.idle)
        u.feed(b"\r\nready\r\n")  # the ESP rebooted: the agent re-initialises it
        for _ in range(1000):
            agent.poll()
            clk.sleep_ms(1)
        self.assertEqual(esp.commands[n : n + 3], [b"AT", b"ATE0", b"AT+SYSLOG=1"])


class TestEspReadyHook(unittest.TestCase):
    def test_hook_runs_after_an_esp_reboot_not_at_start(self):
        clk = VirtualClock()
        u, esp, link, agent = _agent(clk)
        calls = []

        def hook(lk):
            calls.append(lk.command(b"AT+RMNODEINIT").final)

        agent.on_esp_ready = hook
        agent.run(until_idle=True, timeout_ms=5000)
        self.assertEqual(calls, [])
        u.feed(b"\r\nready\r\n")
        for _ in range(1000):
            agent.poll()
            clk.sleep_ms(1)
        self.assertEqual(calls, [b"OK"])
        self.assertIn(b"AT+RMNODEINIT", esp.commands)
