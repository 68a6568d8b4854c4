"""Prometheus text endpoints (the bridges', the service's) read into plain numbers.

The dashboard needs a handful of sums out of each scrape, not a time-series database:
``parse`` keeps every sample by (name, labels) and ``total``/``by_label`` add them up.
"""

from __future__ import annotations

from collections.abc import Mapping

import requests
from prometheus_client.parser import text_string_to_metric_families

from streaming_ml.errors import StackError

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str, timeout_s: float) -> Samples:
    """The samples ``url`` serves; StackError naming the endpoint when it does not answer."""
    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as error:
        raise StackError(f"{url} does not answer ({type(error).__name__})") from error
    return parse(response.text)


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """Sum of the samples called ``name`` whose labels include ``labels``; None if none."""
    found = [
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and _matches(sample_labels, labels)
    ]
    return sum(found) if found else None


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Samples called ``name`` summed per value of ``label``."""
    sums: dict[str, float] = {}
    for (sample, sample_labels), value in samples.items():
        if sample != name:
            continue
        key = dict(sample_labels).get(label)
        if key is not None:
            sums[key] = sums.get(key, 0.0) + value
    return sums


def _matches(sample_labels: Labels, wanted: Mapping[str, str]) -> bool:
    have = dict(sample_labels)
    return all(have.get(k) == v for k, v in wanted.items())
