"""The run directory contract (docs/run_directory.md): atomic io, tables, checkpoints, hashes, verify."""

from provenance.store.run_dir import RunDirectory

__all__ = ["RunDirectory"]
