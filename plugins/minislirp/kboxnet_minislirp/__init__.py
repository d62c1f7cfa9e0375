"""kboxnet-minislirp."""
