"""Transfer with BigTransfer (Kolesnikov et al. 2020, "Big Transfer (BiT): General Visual Representation
Learning", arXiv 1912.11370): fine-tune any backbone with the BiT-HyperRule, then predict offline.

    hyperrule   the BiT-HyperRule: resolution, MixUp, schedule and learning rate from the data's size
    inputs      the fine-tuning input pipeline: crops, flips, MixUp; the evaluation resize
    losses      cross-entropy with label smoothing, and the bi-tempered loss for noisy labels
    training    backbone + zero head, compiled and fitted for the rule's steps, the validation report
    export      the classifier on disk (``classifier.keras`` + ``classifier.json``), found and loaded offline
    finetune    the ``finetune`` command: config -> plan -> run
    tta         test-time augmentation views
    submission  the ``predict`` command: probabilities with TTA, ``submission.csv`` written and checked
"""
