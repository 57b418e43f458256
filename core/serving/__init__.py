"""ADR-049's flow: look the key up, serve a valid entry, or generate once (single-flight),
validate, cache and save."""
