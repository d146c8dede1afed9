"""Console pages: one module per page, each exposing ``router`` (prefix /console/<name>)."""
