"""What a client frame must be before the JSON decoder sees it: UTF-8, and shallow.

Both are checked here because the decoder fails badly on them: msgspec recurses once per
nesting level, so a 6 KB frame of nested arrays (under an ignored field) raised RecursionError
out of the handler and dropped the socket with 1006; and invalid UTF-8 inside a string raises
UnicodeDecodeError, which is not a msgspec.DecodeError either. A text frame that is not UTF-8
must fail the connection with 1007 (RFC 6455 section 8.1); aiohttp does not check it since
the WebSocket is opened with `decode_text=False` (the decoder reads bytes).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_NESTING", "is_utf8", "nests_too_deep"]

# The deepest client message is three levels (`{"data": {"metrics": [...]}}`); unknown fields
# are ignored, so a dashboard may send a little more, never dozens of levels.
MAX_NESTING: Final = 16
# A JSON string, escapes included (unrolled so it scans in one linear pass).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Objects and arrays alike become `[` and `]`; every other byte is dropped. Mismatched pairs
# are malformed JSON, which the decoder reports once this check lets the frame through.
_OPEN_CLOSE: Final = bytes.maketrans(b"{}", b"[]")
_OTHER: Final = bytes(b for b in range(256) if b not in b"[]{}")
# A run of openers longer than MAX_NESTING: too deep without peeling (the usual attack shape,
# on which each peeling pass is slowest).
_RUN: Final = re.compile(rb"\[{%d}" % (MAX_NESTING + 1))


def is_utf8(raw: bytes) -> bool:
    if raw.isascii():  # the common case, without building a str
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def nests_too_deep(raw: bytes) -> bool:
    """True if a decoder reading the JSON text `raw` would descend more than MAX_NESTING levels.

    Cheap for ordinary messages (fewer openers than the limit: two counts). Otherwise strings
    are dropped, the brackets kept, and each `replace` peels one innermost level off every
    branch. Openers left unclosed count too (the decoder descends into them before it finds
    the text malformed), so a malformed frame may be judged deep; it is refused either way.
    Worst case at the default WS_MAX_FRAME_BYTES (16 KiB): about 0.7 ms.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False
    brackets = _STRING.sub(b"", raw).translate(_OPEN_CLOSE, _OTHER)
    if _RUN.search(brackets):
        return True
    peeled_levels = 0
    while b"[]" in brackets:
        if peeled_levels == MAX_NESTING:
            return True
        brackets = brackets.replace(b"[]", b"")
        peeled_levels += 1
    # Left: unpaired brackets, `]...][...[`; the openers nest around what was peeled.
    return peeled_levels + brackets.count(b"[") > MAX_NESTING
