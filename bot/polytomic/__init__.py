"""The Polytomic side: typed models, errors, an async client and name resolution."""
