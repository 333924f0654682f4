"""MLflow: one MLflow run per wdlab run (tag wdlab.run_id), metrics sent in batches.

Any tracking URI works (sqlite:///path.db, a server's http(s)://, file: with
MLFLOW_ALLOW_FILE_STORE=true). Batches go out every `every_seconds` and at each flush (the
engine flushes before every checkpoint); each batch carries the tag wdlab.logged_through,
the last step MLflow holds, so a resumed run skips the steps it would send twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

_BATCH = 999  # MLflow takes at most 1000 entities per log_batch; one is the tag
_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
           "interrupted": "KILLED"}
_TAG_RUN, _TAG_THROUGH = "wdlab.run_id", "wdlab.logged_through"


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:6000]  # MLflow's limit on a param value
    return out


class MLflowLogger:
    def __init__(self, uri: str, experiment: str, target: Any, every_seconds: float = 5.0):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else self._client.create_experiment(experiment))
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{_TAG_RUN}` = '{target.run_id}'",
            max_results=1)
        if runs:  # a resumed run continues its MLflow run
            self.run_id = runs[0].info.run_id
            self._through = int(runs[0].data.tags.get(_TAG_THROUGH, -1))
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            run = self._client.create_run(
                experiment_id, run_name=target.name or target.run_id,
                tags={_TAG_RUN: target.run_id, "wdlab.workload": target.workload})
            self.run_id, self._through = run.info.run_id, -1
            params = [Param(k, v) for k, v in _flat(target.config).items()]
            for i in range(0, len(params), 100):
                self._client.log_batch(self.run_id, params=params[i:i + 100])
        self._pending: list[Any] = []
        self._last_step = self._through
        self._every, self._sent_at = every_seconds, time.monotonic()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        if step <= self._through:
            return  # sent by the process that was killed after it; the values are the same
        now_ms = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now_ms, step) for k, v in metrics.items()]
        self._last_step = max(self._last_step, step)
        if time.monotonic() - self._sent_at >= self._every:
            self.flush()

    def flush(self) -> None:
        from mlflow.entities import RunTag

        while self._pending:
            batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
            through = self._last_step if not self._pending else max(m.step for m in batch) - 1
            self._client.log_batch(self.run_id, metrics=batch,
                                   tags=[RunTag(_TAG_THROUGH, str(through))])
        self._sent_at = time.monotonic()

    def close(self, status: str) -> None:
        self.flush()
        self._client.set_terminated(self.run_id, status=_STATUS.get(status, "FINISHED"))
