"""Text that came from outside (servers, files, coordinators) made safe to show.

Rule: anything printed to a terminal or written into a one-line message first
loses its control characters and escape sequences, so data can neither move
the cursor, recolour the screen, nor split one line into two. At the bottom of
the package: any stage may import it.
"""

from __future__ import annotations

import re

# ANSI/VT escape sequences (CSI, OSC, single-character escapes), then any other
# C0/C1 control character (tab and newline included: one message, one line).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without escape sequences; other control characters become spaces.

    >>> printable("50%\\x1b[2J\\x1b[31m done\\x1b[0m")
    '50% done'
    >>> printable("line one\\r\\nline two\\x07")
    'line one  line two '
    >>> printable("\\x1b]0;title\\x07ok")
    'ok'
    """
    return _CONTROLS.sub(" ", _ESCAPES.sub("", text))
