"""Django's management package for the plugin's commands."""
