"""The deployments on `/metrics`: each one's requests through the router by status,
their latency as a histogram, and its replicas by state, read at scrape time from
the control plane (a deleted deployment's series go with it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .plane import ControlPlane
from .states import ReplicaState


class DeploymentCollector(Collector):
    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        labels = ["workspace", "deployment"]
        requests = CounterMetricFamily(
            "tramontane_deployment_requests",
            "Requests to a deployment through the router, by the status the client got",
            labels=[*labels, "status"],
        )
        latency = HistogramMetricFamily(
            "tramontane_deployment_request_duration_seconds",
            "Requests to a deployment through the router, arrival to last byte",
            labels=labels,
        )
        replicas = GaugeMetricFamily(
            "tramontane_deployment_replicas", "A deployment's replicas, by state", labels=[*labels, "state"]
        )
        desired = GaugeMetricFamily(
            "tramontane_deployment_desired_replicas", "The replica count a deployment aims for", labels=labels
        )
        revision = GaugeMetricFamily(
            "tramontane_deployment_revision", "The revision a deployment serves", labels=labels
        )
        for deployment in self.plane.all():
            names = [deployment.workspace_id, deployment.name]
            stats = deployment.request_stats
            for status, count in sorted(stats.by_status.items()):
                requests.add_metric([*names, str(status)], count)
            latency.add_metric(names, buckets=stats.cumulative_buckets(), sum_value=stats.latency_sum_s)
            states = Counter(r.state for r in deployment.replicas.values())
            for state in ReplicaState:
                if state is not ReplicaState.STOPPED:
                    replicas.add_metric([*names, state.value.lower()], states[state])
            desired.add_metric(names, deployment.desired)
            revision.add_metric(names, deployment.revision)
        yield from (requests, latency, replicas, desired, revision)
