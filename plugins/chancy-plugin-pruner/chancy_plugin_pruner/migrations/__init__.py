"""The pruner's migrations (``NNNN_name.sql``, ``{name}`` placeholders get the app's prefix)."""
