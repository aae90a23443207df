"""Service discovery: namers that turn concrete names into live address sets."""
