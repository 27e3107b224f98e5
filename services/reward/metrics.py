"""The reward service's metrics, in Prometheus' text format at ``GET /metrics``.

Scored items are counted by reward and by the reason of their verdict; the verifier
pool's own health (timeouts, verifier errors, worker restarts, cache hits, live workers)
is read from the pool at scrape time.  A verifier bug turns verdicts into 0.0 with
reason ``verifier_error``: here it shows as a counter that climbs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.rewards import ScoreResult, VerifierPool
from shared.rewards.rules import TIMEOUT, VERIFIER_ERROR


class _PoolCollector(Collector):
    """The verifier pool's counters, read when scraped."""

    def __init__(self, pool: Callable[[], VerifierPool | None]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool()
        if pool is None:
            return
        failures = CounterMetricFamily(
            "vr1_reward_verifier_failures",
            "Symbolic checks that ended without a real verdict, by reason.",
            labels=["reason"],
        )
        for reason in (TIMEOUT, VERIFIER_ERROR):
            failures.add_metric([reason], pool.failures[reason])
        yield failures
        yield CounterMetricFamily(
            "vr1_reward_verifier_restarts",
            "Verifier worker processes killed and replaced.",
            value=pool.restarts(),
        )
        yield CounterMetricFamily(
            "vr1_reward_cache_hits", "Verdicts served from the cache.", value=pool.cache.hits
        )
        yield GaugeMetricFamily(
            "vr1_reward_verifier_workers_alive",
            "Verifier worker processes running now.",
            value=pool.alive_workers(),
        )


class ServiceMetrics:
    """One app's metrics (a registry of its own, so several apps can live in one process)."""

    def __init__(self, pool: Callable[[], VerifierPool | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.items = Counter(
            "vr1_reward_items",
            "Items scored, by reward and by the reason of the verdict.",
            ["reward", "reason"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pool))

    def observe(self, reward: str, results: Sequence[ScoreResult]) -> None:
        """Count a scored batch."""
        for result in results:
            self.items.labels(reward, result.reason).inc()

    def render(self) -> bytes:
        """Everything, in the Prometheus text exposition format."""
        return generate_latest(self.registry)
