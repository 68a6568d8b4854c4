"""``python -m streaming_ml.cli``: the same command as ``streaming-ml``."""

from streaming_ml.cli import main

main()
