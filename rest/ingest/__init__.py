"""Request bodies as they arrive, never held whole: a separation request's JSON
(``json_stream``) or multipart form (``multipart_stream``) streamed into a song file
(``song_sink``) and read as an ``Upload`` (``uploads``); the pace every body must keep
(``pace``)."""
