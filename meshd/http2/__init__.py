"""HTTP/2: the codec interface (codec.py) and its backends (the `h2` library as the reference)."""
