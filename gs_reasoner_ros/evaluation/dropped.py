"""The one exception the official-score functions raise for a sample the official code would not score."""
from __future__ import annotations


class SampleDropped(Exception):
    """The official evaluation would raise on this sample or silently skip it.

    We do what that does to the averages (the sample is left out of them) and the runners count
    and report it under its reason instead of crashing. `reason` is a short stable label used as
    the count's key; the message says where in the official code it happens.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
