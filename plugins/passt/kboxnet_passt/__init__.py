"""kboxnet-passt."""
