"""The metrics Lambda publishes for a stream event source mapping, put into moto's CloudWatch.

So that ``python -m ops status`` reads the same metrics locally as on AWS: ``IteratorAge`` (namespace
``AWS/Lambda``, dimension ``FunctionName``, milliseconds: the age of a batch's last record when the batch
finishes) and the event source mapping's ``OnFailureDestinationDeliveredEventCount`` (dimension
``EventSourceMappingUUID``). Data points are queued by the shard threads and sent by one background thread
(``PutMetricData``, up to 1,000 data points a call, once a second), so a slow or failing CloudWatch never slows a
shard; a failed send is logged and dropped, like a metric lost on the way.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("localcloud.esm")

NAMESPACE = "AWS/Lambda"
_BATCH = 1000


class MetricPublisher:
    """Queues data points and sends them from a daemon thread; :meth:`stop` sends what is left."""

    def __init__(self, client: Callable[[], Any], *, enabled: bool = True, interval_s: float = 1.0) -> None:
        self._client_factory = client
        self._client: Any = None
        self.enabled = enabled
        self.interval_s = interval_s
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, value: float, *, unit: str, dimensions: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        self._queue.put(
            {
                "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                "Timestamp": dt.datetime.now(dt.UTC),
                "Value": float(value),
                "Unit": unit,
            }
        )

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="esm-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def flush(self) -> None:
        """Send everything queued so far."""
        points: list[dict[str, Any]] = []
        while True:
            try:
                points.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for start in range(0, len(points), _BATCH):
            try:
                if self._client is None:
                    self._client = self._client_factory()
                self._client.put_metric_data(Namespace=NAMESPACE, MetricData=points[start : start + _BATCH])
            except Exception as exc:
                log.warning("PutMetricData failed (%d data points dropped): %r", len(points[start:]), exc)
                return

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
