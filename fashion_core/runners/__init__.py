"""One runner per kind of run: ``network``, ``metadata_only``, ``zeroshot``, ``ensemble``, ``prepare``."""
