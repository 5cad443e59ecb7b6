"""Built-in plugins: ordinary plugin modules listed in `turnloom.plugins.DEFAULT_PLUGINS`."""
