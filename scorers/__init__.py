"""Framework-free scoring code: Arrow batches or texts in, columns out. No Beam import."""
