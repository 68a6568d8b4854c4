"""Online evaluation: predictions judged on labels as they arrive, and drift.

``outcomes`` pairs predictions with labels, ``metrics`` keeps running accuracy per
model tag and arm, ``drift`` compares live distributions with the training data's,
``evaluator`` is the Kafka process that runs them, and ``monitor`` shows the result.
"""
