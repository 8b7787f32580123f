"""Models: ``network`` (``FashionNet``, ``build_model``, transfer policies), ``backbones``, ``efficientnet_lite``, ``heads``."""
