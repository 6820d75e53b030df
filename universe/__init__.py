"""The local Universe: packages as data (``packages/``), their format, build and rendering."""
