"""The BentoML price service: its API, validation, predictor, request guard, lineup and launcher."""
