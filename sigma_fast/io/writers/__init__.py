"""Output writers of a corpus run: IMDL-BenCo files, webdataset shards, the shard protocol."""
