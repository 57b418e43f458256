"""Coach Cache core: the ADR-049 program cache, with no Streamlit in it."""
