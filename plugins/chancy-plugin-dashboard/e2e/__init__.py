"""The dashboard's browser tests (`nox -s e2e`)."""
