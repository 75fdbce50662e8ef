"""The leadership plugin's migrations (``NNNN_name.sql``, ``{name}`` placeholders get the
app's prefix)."""
