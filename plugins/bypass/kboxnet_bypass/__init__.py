"""kboxnet-bypass."""
