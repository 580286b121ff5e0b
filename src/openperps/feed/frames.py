"""WebSocket messages beyond what picows does for us, without sockets: outgoing frames built
once, per-message compression (``permessage-deflate``, RFC 7692) negotiated and applied, and
incoming fragments joined into whole messages, inflated, with a bound on what is kept.

Compression is negotiated with no context takeover in either direction: every message is
compressed on its own, so one compressed push is shared by every subscriber that asked for
compression, and no connection keeps a compressor's or an inflater's window (about 300 KB
and 40 KB) between messages.
"""

from __future__ import annotations

import zlib
from typing import Final

from picows import (
    WSListener,
    WSMsgType,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from openperps.feed.session import CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR

EXTENSIONS_HEADER: Final = "Sec-WebSocket-Extensions"
DEFLATE: Final = "permessage-deflate"
# what the server answers to an offer it takes: each message stands alone, both ways
DEFLATE_RESPONSE: Final = f"{DEFLATE}; server_no_context_takeover; client_no_context_takeover"
# the end of a sync-flushed deflate block: left off on the wire, put back to inflate
_SYNC_TAIL: Final = b"\x00\x00\xff\xff"
_LEVEL: Final = 1  # a third of level 6's time for a tenth more bytes on the feed's JSON

_TEXT: Final = 0x81  # FIN and the text opcode
COMPRESSED_TEXT: Final = 0xC1  # FIN, RSV1 (compressed) and the text opcode: a frame's first byte


def text_frame(payload: bytes, compressed: bool = False) -> bytes:
    """A server's (unmasked) websocket text frame (RFC 6455, 5.2), built once and written
    as is to every connection that gets it; ``compressed`` sets RSV1 (RFC 7692, 6)."""
    first = COMPRESSED_TEXT if compressed else _TEXT
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


def deflate(payload: bytes) -> bytes:
    """``payload`` compressed as one message with no context taken over (RFC 7692, 7.2.1)."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[: -len(_SYNC_TAIL)] if data.endswith(_SYNC_TAIL) else data


def deflated_frame(payload: bytes) -> bytes:
    return text_frame(deflate(payload), compressed=True)


def inflate(data: bytes, limit: int) -> bytes:
    """A compressed message's payload, at most ``limit`` + 1 bytes of it (so that a message
    over the limit is known to be, without inflating a bomb). Raises ``zlib.error`` when the
    data is not a deflate stream."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    return inflater.decompress(data + _SYNC_TAIL, limit + 1)


def accepts_deflate(offers: list[str]) -> bool:
    """Whether any ``permessage-deflate`` offer in these ``Sec-WebSocket-Extensions`` header
    values is one the server can take. An offer is declined when a parameter is unknown,
    repeated or malformed (RFC 7692, 5), or when it limits the server's window below the
    full 15 bits the shared compressed pushes are made with; the next offer is then tried."""
    for value in offers:
        for offer in value.split(","):
            name, *params = (part.strip() for part in offer.split(";"))
            if name.lower() == DEFLATE and _acceptable(params):
                return True
    return False


def offers_deflate(request: WSUpgradeRequest) -> bool:
    """Whether an opening handshake offers compression the server can take."""
    return accepts_deflate(request.headers.getall(EXTENSIONS_HEADER, []))


def with_deflate(listener: WSListener) -> WSUpgradeResponseWithListener:
    """The opening handshake's answer for ``listener``, agreeing to compression."""
    response = WSUpgradeResponse.create_101_response({EXTENSIONS_HEADER: DEFLATE_RESPONSE})
    return WSUpgradeResponseWithListener(response, listener)


_WINDOW_PARAMS: Final = frozenset({"server_max_window_bits", "client_max_window_bits"})
_FLAG_PARAMS: Final = frozenset({"server_no_context_takeover", "client_no_context_takeover"})


def _acceptable(params: list[str]) -> bool:
    seen: set[str] = set()
    for param in params:
        key, sep, raw = param.partition("=")
        key = key.strip().lower()
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key in seen:
            return False
        seen.add(key)
        if key in _FLAG_PARAMS:
            if sep:
                return False
        elif key in _WINDOW_PARAMS:
            if not sep:
                if key == "server_max_window_bits":  # its value is required
                    return False
                continue
            if not (value.isascii() and value.isdigit() and 8 <= int(value) <= 15):
                return False
            if key == "server_max_window_bits" and int(value) < 15:
                return False  # the shared pushes use the full window
        else:
            return False
    return True


class ProtocolFailure(Exception):
    """A frame that breaks the websocket protocol: the connection is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MessageReader:
    """Whole messages out of data frames: a fragmented message is joined from its
    continuations and a compressed one (RSV1 on its first frame) inflated. Nothing beyond
    ``limit`` + 1 bytes of a message is kept; the session answers ``frame_too_large`` for
    anything longer than ``limit``."""

    __slots__ = ("_compressed", "_kind", "_parts", "_size", "deflate", "limit")

    def __init__(self, limit: int, deflate: bool) -> None:
        self.limit = limit
        self.deflate = deflate
        self._kind: WSMsgType | None = None  # the message being joined, if any
        self._compressed = False
        self._parts: list[bytes] = []
        self._size = 0

    def feed(
        self, kind: WSMsgType, fin: bool, rsv1: bool, reserved: bool, payload: bytes
    ) -> tuple[WSMsgType, bytes] | None:
        """A whole message once its last frame is in, else None. ``reserved``: RSV2 or RSV3
        set. Raises ``ProtocolFailure`` for a frame the protocol forbids."""
        if reserved or (rsv1 and not self.deflate):
            raise ProtocolFailure(CLOSE_PROTOCOL_ERROR, "reserved bit set")
        if kind == WSMsgType.CONTINUATION:
            if self._kind is None:
                raise ProtocolFailure(CLOSE_PROTOCOL_ERROR, "continuation of no message")
            if rsv1:
                raise ProtocolFailure(CLOSE_PROTOCOL_ERROR, "RSV1 on a continuation")
            self._keep(payload)
            if not fin:
                return None
            message_kind, compressed = self._kind, self._compressed
            data = b"".join(self._parts)
            self._kind, self._parts, self._size = None, [], 0
            return message_kind, self._open(data, compressed)
        if self._kind is not None:
            raise ProtocolFailure(CLOSE_PROTOCOL_ERROR, "a new message before the last one ended")
        if fin:
            return kind, self._open(payload, rsv1)
        self._kind, self._compressed = kind, rsv1
        self._keep(payload)
        return None

    def _keep(self, payload: bytes) -> None:
        # compressed data is kept up to twice the limit: deflate adds a few bytes per 64 KiB
        # at worst, so a message whose compressed form is longer inflates past the limit
        # anyway (and what is kept of it still does)
        bound = self.limit + 1 if not self._compressed else 2 * (self.limit + 1)
        room = bound - self._size
        if room > 0:
            piece = payload[:room]
            self._parts.append(piece)
            self._size += len(piece)

    def _open(self, data: bytes, compressed: bool) -> bytes:
        if not compressed:
            return data[: self.limit + 1]
        try:
            return inflate(data, self.limit)
        except zlib.error:
            raise ProtocolFailure(
                CLOSE_INVALID_DATA, "compressed message is not valid deflate data"
            ) from None
