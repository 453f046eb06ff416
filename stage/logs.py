"""The server's log: one line per message, whatever a client sent.

A request's path, a stage's name or an error's text can carry a newline, a carriage
return or a NUL byte from a client (`/whep/abc%0a2026-12-05 10:01:39,655 INFO ...`
decodes to two lines), and a line of the log would then be the client's, not ours:
a forged "stage ended", or a NUL that makes grep call the log binary. So the text of
every message is written with its control characters escaped (a newline as `\\n`,
others as `\\xNN`); a traceback after it keeps its own lines.
"""

from __future__ import annotations

import logging

# aiortc and aioice log every packet and check at INFO/DEBUG.
NOISY = ("aiortc", "aioice")

_ESCAPED = {code: f"\\x{code:02x}" for code in range(32)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x7F: "\\x7f",
}


class OneLine(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPED)


def set_up(level: str | int, name_prefix: str = "") -> None:
    """Log to standard error at `level`, each line `time LEVEL [prefix]logger: text`."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        OneLine(f"%(asctime)s %(levelname)s {name_prefix}%(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
