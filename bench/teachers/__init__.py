"""Teachers: the store of trained teachers, the grid's supply of them (identity, training, the
runs that hold them), and the cache of their outputs."""
