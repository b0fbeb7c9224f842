"""Version numbers: the package and the store schema (see docs/store.md)."""

__version__ = "0.1.0"

#: Version of the HDF5 store layout. Bumped on any change a reader could notice.
SCHEMA_VERSION = 1
