"""HTTP/1.1 on the proxy path: parsing with httptools, framing rules, header hygiene, streaming bodies."""
