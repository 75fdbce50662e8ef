"""The core's migrations (``NNNN_name.sql``, ``{name}`` placeholders get the prefix)."""
