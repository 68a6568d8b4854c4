"""Re-pricing: every current listing priced again by the champion, through the stream.

``Repricer.run`` checks which model the job is for (the registry's champion, and the
model the service serves), then touches the listings chunk by chunk in primary-key
order (``datasets.reprice``), paced at a rate. Each touch is an ordinary change event:
Debezium, this bridge, the service and the JDBC sink price and write it like any
update, so the table ends with the champion's price of each listing's latest
features (docs/bridge.md, "Re-pricing"). ``promote_and_reprice`` is
`streaming-ml model promote TAG --reprice`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streaming_ml.bridge.pricing import PredictionClient
from streaming_ml.config import Settings
from streaming_ml.datasets import reprice as jobs
from streaming_ml.datasets.reprice import Job
from streaming_ml.errors import RegistryError, RepriceError, WaitTimeoutError
from streaming_ml.models import lifecycle, registry
from streaming_ml.system.waits import Deadline, wait_until

logger = logging.getLogger(__name__)

SWAP_POLL_S = 0.5


@dataclass(frozen=True)
class RepriceRequest:
    """What `streaming-ml reprice` was asked: ``model`` None means the champion."""

    model: str | None = None
    where: str | None = None
    rate: float | None = None
    resume: bool = False


class Repricer:
    """One re-pricing job, run to its end or until ``stop()`` (it then stays resumable).

    ``on_job`` sees the job after each chunk (the CLI's progress bar); ``on_wait`` each
    answer of the service while waiting for it to serve the job's model.
    """

    def __init__(
        self,
        settings: Settings,
        dsn: str,
        request: RepriceRequest,
        *,
        on_job: Callable[[Job], None] | None = None,
        on_wait: Callable[[str | None, Deadline], None] | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.request = request
        self.on_job = on_job
        self.on_wait = on_wait
        self.client = PredictionClient(settings.prediction_url, settings.request_timeout_s)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Return after the chunk in hand (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> Job:
        reader, writer = jobs.connect_pair(self.dsn)
        try:
            jobs.check_jobs_table(reader, self.settings.reprice_jobs_table)
            job = self._job(reader, writer)
            self.wait_until_served(job.model_tag)
            logger.info("re-pricing", extra={"job": job.as_dict()})
            return self._touch_all(reader, writer, job)
        finally:
            reader.close()
            writer.close()

    # -- which job --

    def _job(self, reader: Any, writer: Any) -> Job:
        table = self.settings.reprice_jobs_table
        if self.request.resume:
            unfinished = jobs.unfinished_job(reader, table)
            if unfinished is None:
                raise RepriceError(
                    "no unfinished re-pricing job to resume; start one with `streaming-ml reprice`"
                )
            self._check_champion(unfinished.model_tag)
            return unfinished
        where = jobs.clean_where(self.request.where)
        tag = self._check_champion(self.request.model)
        rate = self.request.rate or self.settings.reprice_rate
        unfinished = jobs.unfinished_job(reader, table, tag, where)
        if unfinished is not None:
            logger.info("resuming the unfinished job", extra={"job_id": unfinished.job_id})
            return unfinished
        # create_job counts the listings READ ONLY before it writes: a bad --where fails there.
        return jobs.create_job(
            reader, writer, jobs=table, listings=self.settings.listings_table,
            tag=tag, where=where, rate=rate,
        )  # fmt: skip

    def _check_champion(self, wanted: str | None) -> str:
        """The tag the job is for: the registry's champion when the service follows the
        registry (the served model while the registry names none), else the model the
        service is pinned to. RepriceError when ``wanted`` is another model."""
        info = self.client.model_info()
        if info is None or not info.get("tag"):
            raise RepriceError(
                f"the prediction service at {self.settings.prediction_url} does not answer "
                "/model_info; start it with `streaming-ml serve` or point SML_SERVICE_URL at it"
            )
        champion = str(info["tag"])
        following = bool((info.get("registry") or {}).get("following"))
        if following:
            try:
                champion = registry.read_aliases(self.settings).champion or champion
            except RegistryError as error:
                raise RepriceError(
                    f"cannot read the model registry to learn the champion ({error}); "
                    "is Kafka up? `streaming-ml stack status`"
                ) from error
        if wanted is not None and wanted != champion and not following:
            raise RepriceError(
                f"refused to re-price with {wanted}: the service at "
                f"{self.settings.prediction_url} is pinned to {champion} (it does not follow "
                "the registry); serve it with SML_MODEL_FOLLOW=true (`streaming-ml serve`)"
            )
        if wanted is not None and wanted != champion:
            raise RepriceError(
                f"refused to re-price with {wanted}: the champion is {champion}, and the table "
                f"would show the champion's prices. Promote it first: "
                f"`streaming-ml model promote {wanted} --reprice`"
            )
        return champion

    def wait_until_served(self, tag: str) -> None:
        """Until the service names ``tag`` as its champion (it follows the registry)."""
        try:
            wait_until(
                self.client.champion_tag,
                timeout=self.settings.reprice_swap_timeout_s,
                interval=SWAP_POLL_S,
                what=f"the service at {self.settings.prediction_url} serving {tag}",
                done=lambda served: served == tag,
                on_wait=self.on_wait,
            )
        except WaitTimeoutError as error:
            raise RepriceError(
                f"{error} (it serves {error.last or 'nothing'}); check `streaming-ml model list` "
                "and the service's log, then run `streaming-ml reprice --resume`"
            ) from error

    # -- the touches --

    def _touch_all(self, reader: Any, writer: Any, job: Job) -> Job:
        rate = self.request.rate or job.rate  # a resumed job may be given another rate
        size = jobs.chunk_rows(rate, self.settings.reprice_chunk_rows)
        started, touched = time.monotonic(), 0
        if self.on_job is not None:
            self.on_job(job)
        while not self._stop.is_set():
            ids = jobs.chunk_ids(
                reader, self.settings.listings_table, job.where_sql, job.last_id, job.max_id, size
            )
            if not ids:
                job = jobs.finish_job(writer, self.settings.reprice_jobs_table, job)
                logger.info("re-pricing job done", extra={"job": job.as_dict()})
                break
            ahead = started + jobs.due_after_s(touched, rate) - time.monotonic()
            if ahead > 0 and self._stop.wait(ahead):
                break  # pacing, interruptible by stop()
            job = jobs.touch_chunk(
                writer, jobs=self.settings.reprice_jobs_table,
                listings=self.settings.listings_table, job=job, ids=ids,
            )  # fmt: skip
            touched += len(ids)
            if self.on_job is not None:
                self.on_job(job)
        return job

    def settle(self, job: Job, timeout_s: float, on_wait: Callable[[int, Deadline], None]) -> int:
        """Wait until no prediction row in the job's range names another model than the
        job's (the touches have gone through the pipeline); the count left at the end."""
        reader = jobs.connect_reader(self.dsn)
        try:
            return wait_until(
                lambda: jobs.stale_predictions(
                    reader, listings=self.settings.listings_table,
                    predictions=self.settings.predictions_table, job=job,
                ),
                timeout=timeout_s, interval=1.0, done=lambda left: left == 0,
                what=f"every prediction of job {job.job_id} written by {job.model_tag}",
                on_wait=on_wait,
            )  # fmt: skip
        except WaitTimeoutError as error:
            raise RepriceError(
                f"{error}: {error.last} rows still show another model. Every listing was "
                "touched (the job is done); the pipeline has not written all their prices yet. "
                "Check `streaming-ml connectors status`, the bridge's lag and the DLQ on the "
                "dashboard"
            ) from error
        finally:
            reader.close()


def promote_and_reprice(
    settings: Settings, dsn: str, tag: str, *, force: bool = False,
    where: str | None = None, rate: float | None = None,
    on_job: Callable[[Job], None] | None = None,
    on_wait: Callable[[str | None, Deadline], None] | None = None,
) -> tuple[str, str | None, Repricer]:  # fmt: skip
    """`model promote TAG --reprice`: promote, then a Repricer for the new champion (the
    caller runs it: it waits for the service to serve the model before any touch)."""
    where = jobs.clean_where(where)  # a bad --where is refused before the promotion
    new, previous = lifecycle.promote(settings, tag, force)
    request = RepriceRequest(model=new, where=where, rate=rate)
    repricer = Repricer(settings, dsn, request, on_job=on_job, on_wait=on_wait)
    return new, previous, repricer
