"""A parser handler that records events as trace-format lines (see traces/README.md)."""

from tracefmt import escape


class EventLog:
    def __init__(self):
        self.events = []

    def on_line(self, mv):
        self.events.append(b"line " + escape(bytes(mv)))

    def on_prompt(self):
        self.events.append(b"prompt")

    def on_record(self, mv):
        self.events.append(b"record " + escape(bytes(mv)))

    def on_frame_error(self, reason):
        self.events.append(b"frame " + reason.encode())
