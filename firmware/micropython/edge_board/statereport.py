# The board's pacing of the retained `state` document (built by edge_agent/core/statedoc.py):
# sent when its coarse content changes, at most once per state_every_s, and at once on every
# connection.
from edge_agent.core import statedoc


class StateReport:
    def __init__(self):
        self.fields = None
        self.due = False  # a document with new coarse content, or a forced one, waits
        self.sent_at = None  # monotonic seconds of the last document sent
        self._sent = None

    def note(self, reading, decision):
        self.fields = statedoc.fields(reading, decision, reading.throttled)
        if statedoc.signature(self.fields) != self._sent:
            self.due = True

    def force(self):
        self.due = True
        self.sent_at = None

    def document(self, seq, now):
        return statedoc.online(self.fields, seq, now)

    def mark_sent(self, at):
        self.sent_at = at
        self.due = False
        self._sent = statedoc.signature(self.fields)
