"""The Kaggle round trip: ``python -m kitlib kaggle download | publish-kit | push | status | output``.

    api      credentials found without importing ``kaggle`` (which exits without them), API errors explained
    kernels  kernel and dataset metadata, notebook staging and CONFIG reading
    cli      the ``kaggle`` command and its sub-commands
"""
