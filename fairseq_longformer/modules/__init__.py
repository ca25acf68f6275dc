"""Building blocks shared by the plugin's models (attention module, position terms)."""
