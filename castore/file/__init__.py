"""The file backend: one store directory of ref logs and indexes (docs/FORMAT.md)."""
