"""Stop sequences (OpenAI's ``stop``), applied to the text stream of any generation backend.

The scanner sits between a backend's stream and the client: it passes text through as soon as no stop
sequence can begin in it, holds back a tail that might be the start of one, and ends the answer before the
first stop sequence (which is never sent). Working on text, not tokens, it means the same on every engine,
and the caller closing the backend's stream at the stop cancels the rest of the generation.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Feed text pieces in order; :meth:`feed` returns what may be sent now, :attr:`stopped` tells a stop was hit.

    Args:
        stops: the stop sequences; empty strings are ignored.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.stopped = False
        self._held = ""

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return text[: min(hits)]
        # Hold back the longest tail that is the beginning of a stop sequence.
        hold = max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """What is still held back when the generation ended without a stop."""
        held, self._held = self._held, ""
        return held
