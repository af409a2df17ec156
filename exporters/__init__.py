"""Writers from an Avatar to engine file formats (bytes in memory; no file I/O here).

Layout: this folder sits at the repository root (the product layout), but it is
installed and imported only as ``avatarsdk.exporters``: pyproject.toml maps it with
``[tool.setuptools.package-dir] "avatarsdk.exporters" = "exporters"``. That mapping is the
only trick; there is no top-level ``exporters`` package and no sys.path change. Tools
that resolve imports from the tree (rather than from the installed package) need
the same mapping, e.g. an editable install (``pip install -e .``, what ``make
setup`` does).
"""
