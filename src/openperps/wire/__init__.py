"""Wire types: the JSON shapes of the feed and the REST API, shared by server and SDK."""
