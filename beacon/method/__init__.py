"""The method: checks and weights, rewordings, the subject gate, the locality guard and its anchors, training, layers and merging."""
