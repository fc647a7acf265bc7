"""Bring your own domain: a team's documents, FAQ export and style file into the files the recipes need."""
