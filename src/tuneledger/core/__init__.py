"""The foundation: errors, paths, hashing, atomic files, params, git and the hub; no model code."""
