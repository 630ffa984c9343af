"""One page per file. Each has PATH (under /dashboard), TITLE, `layout()` and `register()`."""
