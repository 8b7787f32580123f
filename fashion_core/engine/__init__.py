"""Training machinery: ``train`` (fit / evaluate), ``devices``, ``distributed`` (DDP), ``progress``."""
