"""Read models built from the event log: the records the feed and the REST API serve."""

from openperps.indexer.models import Applied, Change, ReadModels

__all__ = ["Applied", "Change", "ReadModels"]
