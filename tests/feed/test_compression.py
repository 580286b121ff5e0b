"""Per-message compression (permessage-deflate) and whole messages from fragments: the offer
parser, the codec and the message reader on their own, then the server with real clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from picows import WSMsgType

from openperps.feed.frames import (
    COMPRESSED_TEXT,
    DEFLATE_RESPONSE,
    MessageReader,
    ProtocolFailure,
    accepts_deflate,
    deflate,
    deflated_frame,
    inflate,
    text_frame,
)
from openperps.feed.server import ServerLimits
from openperps.feed.session import CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR
from openperps.runtime.app import Exchange
from tests.feed.test_server import ALICE, recv, trade, url
from tests.feed.test_server_limits import start

TEXT, BINARY, MORE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION

# -- negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offers", "accepted"),
    [
        (["permessage-deflate"], True),
        (["permessage-deflate; client_max_window_bits"], True),  # browsers, Node's ws
        (["permessage-deflate; client_max_window_bits=10"], True),
        (["permessage-deflate; server_max_window_bits=15"], True),
        (['permessage-deflate; server_max_window_bits="15"'], True),
        (["Permessage-Deflate; Server_No_Context_Takeover; client_no_context_takeover"], True),
        # the pushes are shared, compressed once with the full window: a smaller one declined
        (["permessage-deflate; server_max_window_bits=10"], False),
        # ... but a later offer in the same header, or in another, is taken
        (["permessage-deflate; server_max_window_bits=10, permessage-deflate"], True),
        (["x-webkit-deflate-frame", "permessage-deflate"], True),
        (["x-webkit-deflate-frame"], False),
        ([], False),
        ([""], False),
        # malformed offers are declined (RFC 7692, 5)
        (["permessage-deflate; server_max_window_bits"], False),
        (["permessage-deflate; client_max_window_bits=16"], False),
        (["permessage-deflate; client_max_window_bits=7"], False),
        (["permessage-deflate; client_max_window_bits=abc"], False),
        (["permessage-deflate; client_max_window_bits=¹⁵"], False),
        (["permessage-deflate; server_no_context_takeover=1"], False),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], False),
        (["permessage-deflate; mystery"], False),
    ],
)
def test_offers_are_taken_or_declined(offers: list[str], accepted: bool) -> None:
    assert accepts_deflate(offers) is accepted


# -- the codec --------------------------------------------------------------------------------


@given(st.binary(max_size=5000))
def test_a_compressed_message_inflates_to_itself(payload: bytes) -> None:
    assert inflate(deflate(payload), len(payload)) == payload


def squeezed(payload: bytes) -> bytes:
    """``payload`` compressed as hard as a client may (the server itself uses level 1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_inflating_stops_past_the_limit() -> None:
    """A bomb is cut at the limit while it is inflated, not after: memory stays bounded."""
    bomb = squeezed(b"\x00" * 20_000_000)  # 20 MB of zeros fit in about 20 KB
    assert len(bomb) < 30_000
    tracemalloc.start()
    try:
        inflated = inflate(bomb, 64 * 1024)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(inflated) == 64 * 1024 + 1
    assert peak < 1_000_000, "the 20 MB were never inflated whole"


def test_frames_carry_rsv1_only_when_compressed() -> None:
    payload = b'{"message":"recent_trades","data":[]}' * 100
    plain, packed = text_frame(payload), deflated_frame(payload)
    assert plain[0] == 0x81 and packed[0] == COMPRESSED_TEXT
    assert len(packed) < len(plain) / 10
    assert packed[1] == len(deflate(payload)) < 126  # a one-byte length: no extension
    assert packed[2:] == deflate(payload)
    assert zlib.decompressobj(-15).decompress(packed[2:] + b"\x00\x00\xff\xff") == payload


# -- the message reader -----------------------------------------------------------------------


def test_fragments_are_joined_into_one_message() -> None:
    reader = MessageReader(limit=100, deflate=False)
    assert reader.feed(TEXT, False, False, False, b'{"topic":') is None
    assert reader.feed(MORE, False, False, False, b' "orderbook", ') is None
    assert reader.feed(MORE, True, False, False, b'"market_id": 1}') == (
        TEXT,
        b'{"topic": "orderbook", "market_id": 1}',
    )
    # and the reader is ready for the next message
    assert reader.feed(BINARY, True, False, False, b"x") == (BINARY, b"x")


def test_a_compressed_message_may_come_in_fragments() -> None:
    payload = json.dumps({"topic": "order_history", "address": ALICE}).encode()
    packed = deflate(payload)
    reader = MessageReader(limit=1000, deflate=True)
    assert reader.feed(TEXT, False, True, False, packed[:5]) is None
    assert reader.feed(MORE, False, False, False, packed[5:9]) is None
    assert reader.feed(MORE, True, False, False, packed[9:]) == (TEXT, payload)


def test_a_message_over_the_limit_is_cut_at_limit_plus_one() -> None:
    reader = MessageReader(limit=10, deflate=True)
    assert reader.feed(TEXT, True, False, False, b"a" * 50) == (TEXT, b"a" * 11)
    for i in range(100):
        assert reader.feed(TEXT if i == 0 else MORE, False, False, False, b"b" * 1000) is None
    assert reader.feed(MORE, True, False, False, b"b") == (TEXT, b"b" * 11)
    assert reader.feed(TEXT, True, True, False, deflate(b"c" * 100_000)) == (TEXT, b"c" * 11)


def test_a_long_compressed_message_in_fragments_is_kept_bounded() -> None:
    noise = os.urandom(5_000)  # does not compress: longer compressed than the limit
    packed = deflate(noise)
    pieces = [packed[start : start + 100] for start in range(0, len(packed), 100)]
    reader = MessageReader(limit=1_000, deflate=True)
    assert reader.feed(TEXT, False, True, False, pieces[0]) is None
    for piece in pieces[1:-1]:
        assert reader.feed(MORE, False, False, False, piece) is None
    assert reader._size <= 2 * 1_001
    message = reader.feed(MORE, True, False, False, pieces[-1])
    assert message == (TEXT, noise[:1_001])  # over the limit: frame_too_large


@pytest.mark.parametrize(
    ("deflate_on", "frames", "code"),
    [
        (False, [(TEXT, True, True, False, b"x")], CLOSE_PROTOCOL_ERROR),  # RSV1 not agreed
        (True, [(TEXT, True, False, True, b"x")], CLOSE_PROTOCOL_ERROR),  # RSV2/RSV3
        (True, [(MORE, True, False, False, b"x")], CLOSE_PROTOCOL_ERROR),  # nothing to continue
        (
            True,
            [(TEXT, False, False, False, b"x"), (TEXT, True, False, False, b"y")],
            CLOSE_PROTOCOL_ERROR,
        ),
        (
            True,
            [(TEXT, False, True, False, b"x"), (MORE, True, True, False, b"y")],
            CLOSE_PROTOCOL_ERROR,
        ),
        (True, [(TEXT, True, True, False, b"\xff\xfe not deflate")], CLOSE_INVALID_DATA),
    ],
)
def test_frames_the_protocol_forbids_fail_the_connection(
    deflate_on: bool, frames: list[tuple[WSMsgType, bool, bool, bool, bytes]], code: int
) -> None:
    reader = MessageReader(limit=100, deflate=deflate_on)
    *before, last = frames
    for frame in before:
        assert reader.feed(*frame) is None
    with pytest.raises(ProtocolFailure) as failure:
        reader.feed(*last)
    assert failure.value.code == code


# -- the server ---------------------------------------------------------------------------------


def extensions(ws: Any) -> str | None:
    """The extensions the server agreed to in its handshake answer."""
    response = ws.response
    assert response is not None
    value = response.headers.get("Sec-WebSocket-Extensions")
    return None if value is None else str(value)


def live(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["message"].startswith("live_")]


LIST_TOPICS = {"recent_trades", "orderbook", "trade_history"}


def final_states(frames: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last push of each list topic."""
    return {f["message"]: f for f in frames if f["message"] in LIST_TOPICS}


async def drain(ws: Any) -> list[dict[str, Any]]:
    """Everything the server sends until it has been quiet for half a second."""
    frames = []
    while True:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
        except TimeoutError:
            return frames


async def test_compressing_and_plain_clients_get_the_same_pushes(exchange: Exchange) -> None:
    requests = [
        {"topic": "recent_trades", "market_id": 1338, "id": 1},
        {"topic": "orderbook", "market_id": 1338, "id": 2},
        {"topic": "live_trade_history", "address": ALICE, "id": 3},
        {"topic": "trade_history", "address": ALICE, "id": 4},
    ]
    async with (
        websockets.connect(url(exchange)) as packed,  # offers permessage-deflate by default
        websockets.connect(url(exchange), compression=None) as plain,
    ):
        assert extensions(packed) == DEFLATE_RESPONSE
        assert extensions(plain) is None
        for ws in (packed, plain):
            for request in requests:
                await ws.send(json.dumps(request))
        first = [await drain(ws) for ws in (packed, plain)]  # acks and snapshots
        assert len(first[0]) == 7  # live_trade_history has no snapshot
        assert first[0] == first[1]
        sent = exchange.feed.metrics.compressed_sent
        for _ in range(8):  # trades make every list long enough to be compressed
            await trade(exchange)
        got = [await drain(ws) for ws in (packed, plain)]
        assert len(got[0]) > 10
        # live records: every one, in order; list states: the same final state (a slow
        # connection may have had older ones coalesced away)
        assert live(got[0]) == live(got[1]) and len(live(got[0])) >= 8
        assert final_states(got[0]) == final_states(got[1])
        assert set(final_states(got[0])) == LIST_TOPICS
        assert exchange.feed.metrics.compressed_sent > sent
        assert sum(exchange.feed.metrics.latency_counts) > 0  # pushes timed from durability
        assert exchange.feed.metrics.deflate_connections == 1


async def test_compression_can_be_turned_off(tmp_path: Path) -> None:
    ex = await start(tmp_path, ServerLimits(deflate_min_bytes=0))
    try:
        async with websockets.connect(url(ex)) as ws:
            assert extensions(ws) is None
            await ws.send(json.dumps({"method": "ping", "id": 1}))
            assert (await recv(ws))["message"] == "pong"
    finally:
        await ex.stop()


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_a_fragmented_request_is_one_request(
    exchange: Exchange, compression: str | None
) -> None:
    request = json.dumps({"topic": "order_history", "address": ALICE, "id": 7})
    async with websockets.connect(url(exchange), compression=compression) as ws:
        await ws.send(iter([request[:5], request[5:20], request[20:]]))  # three frames
        ack, snapshot = [await recv(ws) for _ in range(2)]
        assert (ack["message"], ack["id"]) == ("subscribed", 7)
        assert snapshot["message"] == "order_history"


# -- raw frames, for what well-behaved clients never send ---------------------------------------


class RawClient:
    """A websocket client that writes frames as it is told, right or wrong."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, extensions: str | None) -> tuple[RawClient, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws/ HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        assert head.startswith("HTTP/1.1 101"), head
        return cls(reader, writer), head

    def send(self, first: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes((first, 0x80 | size))
        elif size < 1 << 16:
            header = bytes((first, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((first, 0x80 | 127)) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    async def receive(self) -> tuple[int, bytes]:
        """(first header byte, payload) of the next frame."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return first, await self.reader.readexactly(size)

    async def close_code(self) -> int:
        while True:
            first, payload = await self.receive()
            if first & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):  # the server may have dropped it already
            await self.writer.wait_closed()


@pytest.mark.parametrize(
    ("first", "payload"),
    [
        (COMPRESSED_TEXT, deflate(b'{"method": "ping"}')),  # RSV1, no compression agreed
        (0x80, b'{"method": "ping"}'),  # FIN, opcode 0: continues no message
    ],
    ids=["compressed_without_agreement", "continuation_of_nothing"],
)
async def test_a_frame_the_protocol_forbids_closes_1002(
    exchange: Exchange, first: int, payload: bytes
) -> None:
    client, head = await RawClient.connect(exchange.feed.port, None)
    try:
        assert "permessage-deflate" not in head
        client.send(first, payload)
        assert await client.close_code() == 1002
        assert exchange.feed.metrics.closes["protocol_error"] == 1
    finally:
        await client.close()


async def test_corrupt_compressed_data_closes_1007(exchange: Exchange) -> None:
    client, head = await RawClient.connect(
        exchange.feed.port, "permessage-deflate; client_max_window_bits"
    )
    try:
        assert DEFLATE_RESPONSE in head
        client.send(COMPRESSED_TEXT, deflate(b'{"method": "ping", "id": 1}'))
        first, payload = await client.receive()
        assert first == 0x81 and json.loads(payload) == {"message": "pong", "id": 1}
        client.send(COMPRESSED_TEXT, b"\xff\xff\xff not deflate")
        assert await client.close_code() == 1007
    finally:
        await client.close()


async def test_a_compressed_bomb_is_refused_as_too_large(exchange: Exchange) -> None:
    client, _ = await RawClient.connect(exchange.feed.port, "permessage-deflate")
    try:
        # 50 MB of spaces, about 50 KB on the wire
        client.send(COMPRESSED_TEXT, squeezed(b" " * 50_000_000))
        first, payload = await client.receive()
        error = json.loads(payload)
        assert error["message"] == "error" and error["error"]["code"] == "frame_too_large"
        assert first == 0x81  # small answers go uncompressed
        # still open, still served
        client.send(COMPRESSED_TEXT, deflate(b'{"method": "ping", "id": 2}'))
        first, payload = await client.receive()
        assert (first, json.loads(payload)) == (0x81, {"message": "pong", "id": 2})
    finally:
        await client.close()


# -- the message reader, over many frame sequences ---------------------------------------------

LIMIT = 300


@st.composite
def split_messages(draw: st.DrawFn) -> tuple[list[tuple[WSMsgType, bytes]], list[Any]]:
    """Messages (some compressed) cut into fragments at random: (what was sent, the frames)."""
    sent: list[tuple[WSMsgType, bytes]] = []
    frames: list[Any] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from([TEXT, BINARY]))
        payload = draw(st.binary(max_size=2 * LIMIT) | st.just(b"{}" * draw(st.integers(0, 400))))
        compressed = draw(st.booleans())
        data = deflate(payload) if compressed else payload
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for i, piece in enumerate(pieces):
            first, last = i == 0, i == len(pieces) - 1
            frames.append((kind if first else MORE, last, compressed and first, False, piece))
        sent.append((kind, payload))
    return sent, frames


@given(split_messages())
def test_fragmented_and_compressed_messages_come_out_whole(
    case: tuple[list[tuple[WSMsgType, bytes]], list[Any]],
) -> None:
    sent, frames = case
    reader = MessageReader(limit=LIMIT, deflate=True)
    got = [message for frame in frames if (message := reader.feed(*frame)) is not None]
    assert got == [(kind, payload[: LIMIT + 1]) for kind, payload in sent]


frame_strategy = st.tuples(
    st.sampled_from([TEXT, BINARY, MORE]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=600) | st.builds(deflate, st.binary(max_size=2000)),
)


@given(st.booleans(), st.lists(frame_strategy, max_size=30))
def test_any_frame_sequence_gives_messages_or_a_protocol_failure(
    deflate_on: bool, frames: list[tuple[WSMsgType, bool, bool, bool, bytes]]
) -> None:
    reader = MessageReader(limit=LIMIT, deflate=deflate_on)
    for frame in frames:
        try:
            message = reader.feed(*frame)
        except ProtocolFailure as failure:
            assert failure.code in (CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA)
            return  # the connection is closed: nothing more is read
        if message is not None:
            kind, data = message
            assert kind in (TEXT, BINARY)
            assert len(data) <= LIMIT + 1


async def test_frames_after_a_protocol_failure_are_not_read(exchange: Exchange) -> None:
    """A forbidden frame and a request in the same write: the close comes first and alone;
    the connection is not left subscribed."""
    client, _ = await RawClient.connect(exchange.feed.port, None)
    try:
        client.send(COMPRESSED_TEXT, b"not agreed")
        client.send(0x81, json.dumps({"topic": "orderbook", "market_id": 1338, "id": 1}).encode())
        first, payload = await client.receive()
        assert first & 0x0F == 0x8 and int.from_bytes(payload[:2], "big") == 1002
        await asyncio.sleep(0.1)
        assert exchange.feed.subscription_count() == 0
        assert not any(exchange.feed.hub.holders.values())
    finally:
        await client.close()
