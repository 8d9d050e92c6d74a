"""Backbones: built, loaded and saved, whatever produced them.

    backbones        the kit's backbones by name, and ``load(source)`` for any file, folder or handle
    resnetv2         BiT's ResNet-v2 (GroupNorm + weight standardisation) as a Keras 3 model
    resnetv2_layers  its layers: weight-standardised conv and GroupNorm
    bit_weights      the released BiT weights in and out: official ``.npz`` and TF2 SavedModels
    hub              where a TF-Hub / Kaggle Models handle lives on disk (offline first)
    precision        a model rebuilt under another dtype policy with the same weights
    standin          small random backbones saved to a file, for tests, the demo and smoke runs
"""
