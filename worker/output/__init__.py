"""A job's output: its tracks, mixed from the stems, encoded once each and stored."""
