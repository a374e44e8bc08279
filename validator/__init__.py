"""`unggah validate`: the single writer of the results store, judging every stored upload."""
