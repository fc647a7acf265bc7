"""Shared foundation used by every other package: settings, errors, model loading, the prompt template
and the generation engine. Depends on no other tunerag package."""
