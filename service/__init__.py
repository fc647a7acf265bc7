"""The product surface: the Litestar HTTP API (``service.app``) and the ``tunerag`` CLI (``service.cli``).
Sits on top of every other package and may start training and evaluation jobs."""
