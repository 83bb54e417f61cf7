"""Applications built on the Python API: the files `fewseg segment` writes, the web page."""
