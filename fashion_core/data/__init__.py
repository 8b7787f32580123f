"""Data: sources -> catalog -> splits -> image cache -> loader; ``prepared`` runs the chain."""
