"""Corpus cleaning steps used by `lmpretrain.prepare`: each module is plain Python over strings or
numpy arrays, with a typed config, so it can be tested and reused on its own."""
