"""clse-example-plugin: a third-party package that adds plugins to clse through entry points.

Each module is one plugin and is registered by its own entry point (see ``pyproject.toml``):

* :mod:`clse_example.hard_negative_margin`: alignment ``hard_negative_margin`` (VSE++ max-margin
  ranking with the hardest in-batch negative), plus the YAML preset ``alignment=vse0``;
* :mod:`clse_example.max_pooling`: pooling ``max_tokens`` (element-wise max over real tokens).

Nothing is imported here, so one broken module cannot stop the other from loading.
"""

__version__ = "0.1.0"
