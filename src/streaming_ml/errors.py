"""One root exception; every message says what failed and what to do about it."""


class StreamingMLError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(StreamingMLError):
    """A setting is missing or inconsistent."""


class DataError(StreamingMLError):
    """Input data cannot be read or does not fit the listing schema."""


class ModelNotFoundError(StreamingMLError):
    """No trained model exists in the BentoML model store."""


class StackError(StreamingMLError):
    """A local stack component could not be installed, started, or reached."""


class ConnectorError(StreamingMLError):
    """A Kafka Connect connector could not be registered or is not running."""


class ServiceUnavailableError(StreamingMLError):
    """The prediction service did not answer in time."""


class WaitTimeoutError(StreamingMLError):
    """A bounded wait ran out: says what was awaited, for how long, and the last answer."""

    def __init__(self, what: str, timeout_s: float, last: object = None) -> None:
        super().__init__(f"{what}: not done after {timeout_s:g}s")
        self.what = what
        self.timeout_s = timeout_s
        self.last = last


class BridgeError(StreamingMLError):
    """The bridge cannot keep its delivery guarantee (Kafka unreachable, bad answer)."""


class BenchError(StreamingMLError):
    """A benchmark run could not be completed (pipeline not keeping up, bad figures)."""


class RegistryError(StreamingMLError):
    """The model registry (its Kafka topics) cannot be read or written, or refuses a change."""


class ListingNotFoundError(StreamingMLError):
    """No listing with the requested id in the listings table."""


class UntrustedModelError(RegistryError):
    """A model on the models topic is not signed with the registry's key, or not as the
    tag it was published under: it is never loaded."""


class RepriceError(StreamingMLError):
    """A re-pricing job cannot start or go on (not the champion, a bad --where, no job)."""
