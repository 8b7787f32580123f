"""The technique grid: ``plan``, ``cells``, ``scheduler``, ``executors``, ``worker_pool``, ``status``, ``eta``, ``costs``, ``main_job``."""
