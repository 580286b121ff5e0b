"""The Prometheus text of a process's figures: build, feed, bus. ``openperps serve`` serves it
on the REST server's ``/metrics``, a gateway on its own small HTTP port."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openperps import __version__
from openperps.core import is_compiled
from openperps.feed.server import FeedServer

if TYPE_CHECKING:
    from openperps.bus.nats import NatsConsumer, NatsPublisher


def _metrics(*rows: tuple[str, str, object]) -> list[str]:
    """Each (name, kind, value) as its TYPE line and its sample."""
    lines: list[str] = []
    for name, kind, value in rows:
        lines += (f"# TYPE {name} {kind}", f"{name} {value}")
    return lines


def exposition(*sections: list[str]) -> str:
    """A process's ``/metrics`` text: the build, then each section."""
    build = "compiled" if is_compiled() else "pure"
    lines = [
        "# TYPE openperps_build_info gauge",
        f'openperps_build_info{{version="{__version__}",engine="{build}"}} 1',
    ]
    for section in sections:
        lines += section
    return "\n".join(lines) + "\n"


def version_lines(version: int) -> list[str]:
    """The version the exchange's engine is at."""
    return _metrics(("openperps_transaction_version", "gauge", version))


def feed_lines(feed: FeedServer) -> list[str]:
    m = feed.metrics
    frames, queued, largest = feed.outbox_stats()
    lines = _metrics(
        ("openperps_feed_connections", "gauge", m.connections),
        ("openperps_feed_deflate_connections", "gauge", m.deflate_connections),
        ("openperps_feed_subscriptions", "gauge", feed.subscription_count()),
        ("openperps_feed_subscribed_keys", "gauge", len(feed.hub.holders)),
        ("openperps_feed_paused_connections", "gauge", len(feed.paused)),
        ("openperps_feed_outbox_frames", "gauge", frames),
        ("openperps_feed_outbox_bytes", "gauge", queued),
        ("openperps_feed_outbox_largest_bytes", "gauge", largest),
        ("openperps_feed_coalesced_total", "counter", m.coalesced),
        ("openperps_feed_messages_sent_total", "counter", m.messages_sent),
        ("openperps_feed_bytes_sent_total", "counter", m.bytes_sent),
        ("openperps_feed_compressed_messages_total", "counter", m.compressed_sent),
    )
    lines.append("# TYPE openperps_feed_closes_total counter")
    lines += [f'openperps_feed_closes_total{{reason="{k}"}} {v}' for k, v in m.closes.items()]
    lines.append("# TYPE openperps_feed_push_latency_ms histogram")
    cumulative = 0
    for bound, count in zip(m.latency_buckets, m.latency_counts, strict=False):
        cumulative += count
        lines.append(f'openperps_feed_push_latency_ms_bucket{{le="{bound}"}} {cumulative}')
    cumulative += m.latency_counts[-1]
    lines.append(f'openperps_feed_push_latency_ms_bucket{{le="+Inf"}} {cumulative}')
    lines.append(f"openperps_feed_push_latency_ms_sum {m.latency_sum}")
    lines.append(f"openperps_feed_push_latency_ms_count {cumulative}")
    return lines


def publisher_lines(publisher: NatsPublisher) -> list[str]:
    """The engine's side of the bus: how far NATS has acknowledged, what was dropped."""
    return _metrics(
        ("openperps_bus_handed_version", "gauge", publisher.last_version),
        ("openperps_bus_published_version", "gauge", publisher.published_version),
        ("openperps_bus_messages_total", "counter", publisher.messages),
        ("openperps_bus_dropped_total", "counter", publisher.dropped),
        ("openperps_bus_failures_total", "counter", publisher.failures),
        ("openperps_bus_connected", "gauge", int(publisher.connected)),
    )


def consumer_lines(consumer: NatsConsumer) -> list[str]:
    """A gateway's side of the bus: the version it has applied, holes filled from the log."""
    return _metrics(
        ("openperps_gateway_version", "gauge", consumer.version),
        ("openperps_gateway_messages_total", "counter", consumer.messages),
        ("openperps_gateway_holes_filled_total", "counter", consumer.holes_filled),
        ("openperps_gateway_holes_unfilled_total", "counter", consumer.holes_unfilled),
        ("openperps_gateway_waiting_for_log", "gauge", int(consumer.waiting_for_log)),
        ("openperps_gateway_log_version", "gauge", consumer.log_version),
        ("openperps_gateway_behind_seconds", "gauge", round(consumer.behind_s, 3)),
        ("openperps_gateway_log_reads_total", "counter", consumer.log_reads),
    )
