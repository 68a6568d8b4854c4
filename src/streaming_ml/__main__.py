"""``python -m streaming_ml``: the same command as ``streaming-ml``."""

from streaming_ml.cli import main

main()
